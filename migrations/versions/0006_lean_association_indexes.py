"""Association indexes: the lookup hashes' made partial, the Matrix ID's dropped

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 21:45:00

Every index on `association` serves a query (docs/performance.md, "Indexes of the
association table"): a slot's hashes are NULL but during a pepper rotation, and a
non-partial btree keeps an entry per NULL; no query searches by `mxid` alone.

"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

SLOTS = ('lookup_hash', 'lookup_hash_alt')


def upgrade():
    with op.batch_alter_table('association', schema=None) as batch_op:
        batch_op.drop_index('ix_association_mxid')
        for name in SLOTS:
            batch_op.drop_index(f'ix_association_{name}')
            batch_op.create_index(
                f'ix_association_{name}', [name], unique=False,
                sqlite_where=sa.text(f'{name} IS NOT NULL'),
                postgresql_where=sa.text(f'{name} IS NOT NULL'),
            )


def downgrade():
    with op.batch_alter_table('association', schema=None) as batch_op:
        for name in SLOTS:
            batch_op.drop_index(f'ix_association_{name}')
            batch_op.create_index(f'ix_association_{name}', [name], unique=False)
        batch_op.create_index('ix_association_mxid', ['mxid'], unique=False)
