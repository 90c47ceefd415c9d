"""Baseline: the decisions table.

The ``decisions`` table exactly as ``metadata.create_all`` made it before migrations existed.
A database made by that older code (the table, no version table) is stamped with this revision,
not upgraded through it. Frozen: never edit; change the schema in a new revision.

Revision ID: 0001
Revises: (none)
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create ``decisions`` and its three indexes, named as ``create_all`` named them."""
    op.create_table(
        "decisions",
        # SQLite autoincrements only an INTEGER PRIMARY KEY.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("request_id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("text_hash", sa.String(), nullable=False),
        sa.Column("requested_model", sa.String(), nullable=False),
        # UTC: TIMESTAMP WITH TIME ZONE on PostgreSQL, naive UTC text on SQLite.
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("text", sa.Text()),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("predicted_tier", sa.String()),
        sa.Column("confidence", sa.Double()),
        sa.Column("gate_action", sa.String()),
        sa.Column("override_rule", sa.String()),
        sa.Column("override_domain", sa.String()),
        sa.Column("pinned", sa.Boolean(), nullable=False),
        sa.Column("target_tier", sa.String()),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("threshold_source", sa.String()),
        sa.Column("deployments_tried", sa.JSON(), nullable=False),
        sa.Column("fallbacks", sa.JSON(), nullable=False),
        sa.Column("final_tier", sa.String()),
        sa.Column("final_model", sa.String()),
        sa.Column("prompt_tokens", sa.Integer()),
        sa.Column("completion_tokens", sa.Integer()),
        sa.Column("cost_usd", sa.Double()),
        sa.Column("latency_ms", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("model_version", sa.String()),
        sa.Column("cache_status", sa.String()),
        sa.Column("cache_similarity", sa.Double()),
        sa.Column("feedback", sa.Text()),
        sa.Column("extra", sa.JSON(), nullable=False),
    )
    op.create_index("ix_decisions_request_id", "decisions", ["request_id"], unique=True)
    op.create_index("ix_decisions_tenant", "decisions", ["tenant"])
    op.create_index("ix_decisions_created_at", "decisions", ["created_at"])


def downgrade() -> None:
    """Drop ``decisions`` with every row in it."""
    op.drop_table("decisions")
