"""The inventory: offices, their alternates and devices, read from `inventory/` (see loader.py)."""

from baton.inventory.loader import InventoryReading, load_inventory, merge, read_inventory
from baton.yamlsource import ConfigError, Problem

__all__ = ["ConfigError", "InventoryReading", "Problem", "load_inventory", "merge", "read_inventory"]
