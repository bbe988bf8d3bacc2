"""gold sets: candidate sets with a known best/worst answer

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 08:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "gold_answers",
        sa.Column("candidate_set_id", sa.Integer(), nullable=False),
        sa.Column("best_image_id", sa.Integer(), nullable=False),
        sa.Column("worst_image_id", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["candidate_set_id"], ["candidate_sets.id"],
                                name=op.f("fk_gold_answers_candidate_set_id_candidate_sets")),
        sa.ForeignKeyConstraint(["best_image_id"], ["images.id"], name=op.f("fk_gold_answers_best_image_id_images")),
        sa.ForeignKeyConstraint(["worst_image_id"], ["images.id"], name=op.f("fk_gold_answers_worst_image_id_images")),
        sa.PrimaryKeyConstraint("candidate_set_id", name=op.f("pk_gold_answers")),
    )


def downgrade() -> None:
    op.drop_table("gold_answers")
