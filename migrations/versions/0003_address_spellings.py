"""Address spellings: the mailbox as written beside each session's and invitation's key,
the lookup hashes of internationalised addresses' Unicode spelling, and the first pepper

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 11:30:00

"""
import base64
import hashlib
import secrets
from datetime import datetime
from datetime import timezone

from alembic import op
import idna
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    # Sessions and invitations made before keep NULL: their mail goes to their key.
    with op.batch_alter_table('validation_session', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mailbox', sa.String(length=320), nullable=True))
    with op.batch_alter_table('invitation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('mailbox', sa.String(length=320), nullable=True))
    with op.batch_alter_table('association', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lookup_hash_unicode', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('lookup_hash_unicode_alt', sa.String(length=64), nullable=True))
        # Partial indexes: only internationalised domains have a value there.
        for name in ('lookup_hash_unicode', 'lookup_hash_unicode_alt'):
            batch_op.create_index(
                f'ix_association_{name}', [name], unique=False,
                sqlite_where=sa.text(f'{name} IS NOT NULL'),
                postgresql_where=sa.text(f'{name} IS NOT NULL'),
            )
    connection = op.get_bind()
    _create_first_pepper(connection)
    _hash_unicode_spellings(connection)


def _create_first_pepper(connection):
    """One pepper from the first start: lookups never have to create it, so every
    worker advertises the same one."""
    if connection.execute(sa.text('SELECT count(*) FROM pepper')).scalar():
        return
    pepper = sa.table(
        'pepper',
        sa.column('value', sa.String),
        sa.column('created_at', sa.DateTime(timezone=True)),
        sa.column('slot', sa.Integer),
        sa.column('activated_at', sa.DateTime(timezone=True)),
    )
    now = datetime.now(timezone.utc)
    # Letters and digits only, as identity.storage.peppers.new_value makes them.
    connection.execute(
        pepper.insert().values(value=secrets.token_hex(16), created_at=now, slot=0, activated_at=now)
    )


def _hash_unicode_spellings(connection):
    """Hash the Unicode spelling of the bindings already at internationalised domains
    (identity.addresses.unicode_spelling, identity.lookup.lookup_hash, as of 0003)."""
    peppers = connection.execute(
        sa.text('SELECT value, slot, activated_at FROM pepper ORDER BY id DESC')
    ).fetchall()
    current = next((p for p in peppers if p.activated_at is not None), None)
    pending = next((p for p in peppers if p.activated_at is None), None)
    by_slot = {p.slot: p.value for p in (pending, current) if p is not None}
    rows = connection.execute(
        sa.text(
            "SELECT id, medium, address, lookup_hash, lookup_hash_alt FROM association"
            " WHERE address LIKE '%xn--%'"
        )
    ).fetchall()
    for row in rows:
        spelling = _unicode_spelling(row.address)
        if spelling is None:
            continue
        values = {'id': row.id, 'h0': None, 'h1': None}
        for slot, existing in ((0, row.lookup_hash), (1, row.lookup_hash_alt)):
            if existing is not None and slot in by_slot:
                values[f'h{slot}'] = _lookup_hash(row.medium, spelling, by_slot[slot])
        connection.execute(
            sa.text(
                'UPDATE association SET lookup_hash_unicode = :h0,'
                ' lookup_hash_unicode_alt = :h1 WHERE id = :id'
            ),
            values,
        )


def _unicode_spelling(address):
    local, _, domain = address.rpartition('@')
    try:
        decoded = idna.decode(domain)
    except (idna.IDNAError, UnicodeError, ValueError):
        return None
    return f'{local}@{decoded}' if decoded != domain else None


def _lookup_hash(medium, address, pepper):
    digest = hashlib.sha256(f'{address} {medium} {pepper}'.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b'=').decode()


def downgrade():
    with op.batch_alter_table('association', schema=None) as batch_op:
        batch_op.drop_index('ix_association_lookup_hash_unicode_alt')
        batch_op.drop_index('ix_association_lookup_hash_unicode')
        batch_op.drop_column('lookup_hash_unicode_alt')
        batch_op.drop_column('lookup_hash_unicode')
    with op.batch_alter_table('invitation', schema=None) as batch_op:
        batch_op.drop_column('mailbox')
    with op.batch_alter_table('validation_session', schema=None) as batch_op:
        batch_op.drop_column('mailbox')
