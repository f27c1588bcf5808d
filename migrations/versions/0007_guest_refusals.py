"""The guest's own say: refusals of invitations, reports of senders, refused invitations

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 00:00:00

Refusals and reports keep no address: only its HMAC under a server secret
(identity.refusals, docs/privacy.md). An invitation its guest refused is revoked,
and `refused_at` says why.

"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('invitation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('refused_at', sa.DateTime(timezone=True), nullable=True))

    op.create_table('guest_refusal',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('address_hash', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=16), nullable=False),
    sa.Column('sender', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_guest_refusal')),
    sa.UniqueConstraint('address_hash', 'scope', 'sender', name=op.f('uq_guest_refusal_address_hash'))
    )
    op.create_table('invite_report',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reporter_hash', sa.String(length=64), nullable=False),
    sa.Column('sender', sa.String(length=255), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_invite_report')),
    sa.UniqueConstraint('reporter_hash', 'sender', name=op.f('uq_invite_report_reporter_hash'))
    )
    with op.batch_alter_table('invite_report', schema=None) as batch_op:
        batch_op.create_index('ix_invite_report_sender_created_at', ['sender', 'created_at'], unique=False)

    op.create_table('reported_sender',
    sa.Column('sender', sa.String(length=255), nullable=False),
    sa.Column('last_report_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('blocked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('sender', name=op.f('pk_reported_sender'))
    )


def downgrade():
    op.drop_table('reported_sender')
    with op.batch_alter_table('invite_report', schema=None) as batch_op:
        batch_op.drop_index('ix_invite_report_sender_created_at')
    op.drop_table('invite_report')
    op.drop_table('guest_refusal')
    with op.batch_alter_table('invitation', schema=None) as batch_op:
        batch_op.drop_column('refused_at')
