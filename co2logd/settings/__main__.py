"""``python -m co2logd.settings``: print README's settings tables."""

from co2logd.settings import markdown_table

print(markdown_table())
