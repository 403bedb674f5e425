"""Scoring for tiny_suite.yaml: recipes.tasks.check (exact match after normalising whitespace)."""


def normalise(text: str) -> str:
    return " ".join(text.split())


def process_results(doc, results):
    return {"exact_match": float(normalise(results[0]) == doc["answer"])}
