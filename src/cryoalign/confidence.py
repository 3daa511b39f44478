"""How far to trust an answer: a verdict from the evidence every result already carries.

    evidence  score          the ranking score of the chosen pose (map correlation)
              margin         its lead over the next distinct pose, relative to it
              overlap        share of source points with a target point within 10 Å
              terms_agree    whether the point similarity and the local (block) correlation
                             also put the chosen pose first among the candidates
    verdict   "low"     a weak score or overlap, or a pose the other terms do not put first
              "high"    a strong score, a clear lead (30%) and nearly full overlap
              "medium"  the rest (including symmetric assemblies: several poses tie)

The thresholds (`THRESHOLDS`) were calibrated on every benchmark set (public and hard;
README, "Confidence"): "high" answers were right (< 3 Å) in at least 98% of cases and
every failure was "low".
"""
from __future__ import annotations

# mode -> thresholds on the evidence (score = map correlation x vector agreement).  A chain
# placed into a map (local) needs a higher score for the same trust: on 5 Å grids a wrong
# placement of a small chain can score like a right one.
THRESHOLDS = {
    "global": dict(low_score=0.10, low_overlap=0.60, high_score=0.30, high_margin=0.30, high_overlap=0.90),
    "local": dict(low_score=0.20, low_overlap=0.60, high_score=0.30, high_margin=0.30, high_overlap=0.90),
}

ADVICE = ("check the contours (pass the EMDB recommended levels), try mode='local' if the source is a part "
          "of the target (or mode='global' if it is not), or a wider search (wide_search=always)")


def assess(candidates: list, mode: str) -> dict:
    """{verdict, evidence} for ranked `candidates` (best first)."""
    best = candidates[0].score
    score = float(best.value)
    others = [c.score.value for c in candidates[1:]]
    margin = (score - max(others)) / abs(score) if others and score else (1.0 if score else 0.0)
    sims = [c.score.similarity for c in candidates]
    locals_ = [c.score.local_correlation for c in candidates if c.score.local_correlation is not None]
    agree = sims[0] >= max(sims) and (not locals_ or len(locals_) < len(candidates)
                                      or locals_[0] >= max(locals_))
    evidence = {"score": round(score, 4), "margin": round(float(margin), 4), "overlap": round(float(best.overlap), 4),
                "terms_agree": bool(agree), "candidates": len(candidates)}
    t = THRESHOLDS[mode]
    if score < t["low_score"] or best.overlap < t["low_overlap"] or not agree:
        verdict = "low"
    elif (score >= t["high_score"] and margin >= t["high_margin"] and best.overlap >= t["high_overlap"]
          and agree):
        verdict = "high"
    else:
        verdict = "medium"
    out = {"verdict": verdict, "evidence": evidence}
    if verdict == "low":
        out["advice"] = ADVICE
    return out
