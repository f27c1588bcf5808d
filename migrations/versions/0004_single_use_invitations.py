"""Single-use invitations: the account an invitation admitted, and when it was handed over

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-29 11:15:00

"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('invitation', schema=None) as batch_op:
        batch_op.add_column(sa.Column('admitted_mxid', sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column('handed_over_at', sa.DateTime(timezone=True), nullable=True))
    # Until now an invitation was accepted only by a bind, which queued its delivery:
    # the delivery job names the account it admitted.
    op.execute('UPDATE invitation SET handed_over_at = accepted_at WHERE accepted_at IS NOT NULL')
    op.execute(
        'UPDATE invitation SET admitted_mxid ='
        ' (SELECT delivery.mxid FROM delivery WHERE delivery.invitation_id = invitation.id)'
        ' WHERE accepted_at IS NOT NULL'
    )


def downgrade():
    # Accepted by a signature only: before this revision nothing recorded it.
    op.execute('UPDATE invitation SET accepted_at = NULL WHERE handed_over_at IS NULL')
    with op.batch_alter_table('invitation', schema=None) as batch_op:
        batch_op.drop_column('handed_over_at')
        batch_op.drop_column('admitted_mxid')
