"""ViLD-style region reranking: proposals, the teacher, and the distilled student."""
