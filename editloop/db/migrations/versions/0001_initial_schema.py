"""initial schema: prompts, images, generations, candidate sets, preferences, registry, runs

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-23 02:44:05.299470
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("blob_key", sa.String(length=80), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("blob_key", name=op.f("uq_images_blob_key")),
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("checkpoint_key", sa.String(length=200), nullable=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["model_versions.id"], name=op.f("fk_model_versions_parent_id_model_versions")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint("name", "version", name="uq_model_versions_name_version"),
    )
    op.create_table(
        "prompts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prompts")),
        sa.UniqueConstraint("text", name=op.f("uq_prompts_text")),
    )
    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=True),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    op.create_table(
        "generations",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=True),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("guidance", sa.Float(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("scheduler", sa.String(length=16), nullable=False),
        sa.Column("source_image_id", sa.Integer(), nullable=True),
        sa.Column("mask_key", sa.String(length=80), nullable=True),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], name=op.f("fk_generations_prompt_id_prompts")),
        sa.ForeignKeyConstraint(["source_image_id"], ["images.id"], name=op.f("fk_generations_source_image_id_images")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_generations")),
    )
    op.create_table(
        "candidate_sets",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("source_image_id", sa.Integer(), nullable=True),
        sa.Column("mask_key", sa.String(length=80), nullable=True),
        sa.Column("generation_id", sa.String(length=32), nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"], ["generations.id"], name=op.f("fk_candidate_sets_generation_id_generations")
        ),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"], name=op.f("fk_candidate_sets_prompt_id_prompts")),
        sa.ForeignKeyConstraint(
            ["source_image_id"], ["images.id"], name=op.f("fk_candidate_sets_source_image_id_images")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_candidate_sets")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_candidate_sets_idempotency_key")),
    )
    op.create_table(
        "generation_images",
        sa.Column("generation_id", sa.String(length=32), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["generation_id"], ["generations.id"], name=op.f("fk_generation_images_generation_id_generations")
        ),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_generation_images_image_id_images")),
        sa.PrimaryKeyConstraint("generation_id", "index", name=op.f("pk_generation_images")),
    )
    op.create_table(
        "candidate_items",
        sa.Column("candidate_set_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["candidate_set_id"], ["candidate_sets.id"], name=op.f("fk_candidate_items_candidate_set_id_candidate_sets")
        ),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name=op.f("fk_candidate_items_image_id_images")),
        sa.PrimaryKeyConstraint("candidate_set_id", "position", name=op.f("pk_candidate_items")),
    )
    op.create_table(
        "preferences",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("candidate_set_id", sa.Integer(), nullable=False),
        sa.Column("best_image_id", sa.Integer(), nullable=True),
        sa.Column("worst_image_id", sa.Integer(), nullable=True),
        sa.Column("annotator", sa.String(length=128), nullable=False),
        sa.Column("ls_task_id", sa.Integer(), nullable=True),
        sa.Column("ls_annotation_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["best_image_id"], ["images.id"], name=op.f("fk_preferences_best_image_id_images")),
        sa.ForeignKeyConstraint(
            ["candidate_set_id"], ["candidate_sets.id"], name=op.f("fk_preferences_candidate_set_id_candidate_sets")
        ),
        sa.ForeignKeyConstraint(["worst_image_id"], ["images.id"], name=op.f("fk_preferences_worst_image_id_images")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_preferences")),
        sa.UniqueConstraint("ls_annotation_id", name=op.f("uq_preferences_ls_annotation_id")),
    )


def downgrade() -> None:
    op.drop_table("preferences")
    op.drop_table("candidate_items")
    op.drop_table("generation_images")
    op.drop_table("candidate_sets")
    op.drop_table("generations")
    op.drop_table("training_runs")
    op.drop_table("prompts")
    op.drop_table("model_versions")
    op.drop_table("images")
