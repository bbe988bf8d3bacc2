"""comparison pairs of edits carry their source image and mask (reviewers see what was edited)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 16:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("comparison_pairs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_image_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("mask_key", sa.String(length=80), nullable=True))
        batch_op.create_foreign_key(op.f("fk_comparison_pairs_source_image_id_images"), "images",
                                    ["source_image_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("comparison_pairs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("fk_comparison_pairs_source_image_id_images"), type_="foreignkey")
        batch_op.drop_column("mask_key")
        batch_op.drop_column("source_image_id")
