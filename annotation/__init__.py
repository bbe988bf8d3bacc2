"""Label Studio: labelling configs, task push, label sync, simulated annotators, statistics.

Built by the annotation issue; the database tables it writes (candidate sets, preferences)
already exist in editloop/db.
"""
