"""Reward-model training: aesthetic and alignment (pairwise, ImageReward-style), coherence (per-pixel BCE).

Each is a plain function; Celery tasks in trainers/tasks.py are thin wrappers around `run.train_reward`.
"""
