"""Gateways: the battery to the systems above it (inverter CAN, SunSpec Modbus TCP)."""
