"""Device emulators: the cell monitors, current sensor, insulation monitor and contactor GPIO
lines of a pack, speaking their protocols byte for byte behind the interfaces the drivers use
(spidev, python-can, gpiod), driven by the simulated plant (:mod:`mbms.emulators.device_server`)."""
