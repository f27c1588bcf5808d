"""Pepper rotation: a second lookup-hash slot, and peppers that know their slot

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 15:45:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('association', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lookup_hash_alt', sa.String(length=64), nullable=True))
        # A slot is emptied when a rotation starts, then filled row by row.
        batch_op.alter_column('lookup_hash', existing_type=sa.String(length=64), nullable=True)
        batch_op.create_index(batch_op.f('ix_association_lookup_hash_alt'), ['lookup_hash_alt'], unique=False)
    with op.batch_alter_table('pepper', schema=None) as batch_op:
        batch_op.add_column(sa.Column('slot', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('activated_at', sa.DateTime(timezone=True), nullable=True))
    # Every pepper so far was current from its creation, hashed in the first slot.
    op.execute('UPDATE pepper SET activated_at = created_at')


def downgrade():
    with op.batch_alter_table('pepper', schema=None) as batch_op:
        batch_op.drop_column('activated_at')
        batch_op.drop_column('slot')
    with op.batch_alter_table('association', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_association_lookup_hash_alt'))
        batch_op.alter_column('lookup_hash', existing_type=sa.String(length=64), nullable=False)
        batch_op.drop_column('lookup_hash_alt')
