"""Sydent peers: their long-term public keys, and which peer stored each invitation

Revision ID: 0005
Revises: 0002
Create Date: 2026-11-29 11:20:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('peer_key',
    sa.Column('server_name', sa.String(length=255), nullable=False),
    sa.Column('public_key', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('server_name', name=op.f('pk_peer_key')),
    sa.UniqueConstraint('public_key', name=op.f('uq_peer_key_public_key'))
    )
    with op.batch_alter_table('invitation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stored_by', sa.String(length=255), nullable=True))


def downgrade():
    with op.batch_alter_table('invitation', schema=None) as batch_op:
        batch_op.drop_column('stored_by')
    op.drop_table('peer_key')
