"""Request-path library of the confidence-gated LLM router. Imports neither training nor serving."""
