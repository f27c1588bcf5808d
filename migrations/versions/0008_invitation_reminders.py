"""Invitation reminders: the sealed key the reminder links with, its claim and its sending

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 00:00:00

One reminder per pending invitation, claimed in the database like the onbind
deliveries (identity.reminders). Invitations stored before this revision have no
sealed key: they get no reminder (their private key was never kept).

"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

WAITING = (
    'reminder_key IS NOT NULL AND reminded_at IS NULL'
    ' AND revoked_at IS NULL AND accepted_at IS NULL'
)


def upgrade():
    with op.batch_alter_table('invitation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reminder_key', sa.String(length=255), nullable=True))
        batch_op.add_column(
            sa.Column('reminder_claimed_until', sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column('reminder_attempts', sa.Integer(), nullable=False, server_default='0')
        )
        batch_op.add_column(sa.Column('reminded_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(
            'ix_invitation_reminder_due', ['expires_at', 'id'], unique=False,
            sqlite_where=sa.text(WAITING),
            postgresql_where=sa.text(WAITING),
        )


def downgrade():
    with op.batch_alter_table('invitation', schema=None) as batch_op:
        batch_op.drop_index('ix_invitation_reminder_due')
        batch_op.drop_column('reminded_at')
        batch_op.drop_column('reminder_attempts')
        batch_op.drop_column('reminder_claimed_until')
        batch_op.drop_column('reminder_key')
