"""HTTP side of a node: WHEP routes, session routes shared with WHIP, problem+json, rate limits."""
