"""Multi-node simulation: a plant with one BMU node per pack, in one process (fast mode, virtual
clock, simulated peer network) or as real processes (processes mode)."""

from mbms.sim.scenario import NetworkEvent, PlantEvent, Scenario

__all__ = ["NetworkEvent", "PlantEvent", "Scenario"]
