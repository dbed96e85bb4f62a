"""Helpers of the sciq_gen task (sciq_gen.yaml)."""


def with_support(dataset):
    """The questions that come with their support paragraph: the task is reading, not recall."""
    return dataset.filter(lambda row: bool(row["support"].strip()))
