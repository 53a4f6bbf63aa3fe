"""A pymodbus slave for fieldgate's Modbus tests (started by tests/support/modbus.rs).

One JSON argument says what to serve:

    {"mode": "tcp" | "rtu" | "rtu-over-tcp",
     "port": 0,                       # tcp modes: 0 picks a free port
     "path": "/dev/pts/N",            # rtu: the slave's end of a pty pair
     "units": [{"id": 1,
                "coils": [true, ...], "discrete": [...],
                "holding": [1, 2, ...], "input": [...],
                "delay": 0.3,         # seconds before answering (a slow slave)
                "delay_address": 0,   # only requests at this address are slow
                "silent": false}]}    # never answers a valid request (sleeps an hour)

Every table starts at address 0; an address past the loaded values is illegal
(exception 2). Lines on stdout, flushed at once, are how the test follows the peer:
`LISTENING <port>` (tcp modes) or `LISTENING` (rtu) once it serves, `REQ <unit> <fc> <address>` for
every request it decodes, `SENT <hex>` for every frame it sends, `SET <fc> <address>
<values>` for every write it applies and `CONNECTED` / `DISCONNECTED` for TCP clients.
"""

import asyncio
import json
import sys

from pymodbus import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice


def say(line):
    print(line, flush=True)


def action_for(unit):
    delay = float(unit.get("delay", 0))
    delay_address = unit.get("delay_address")
    silent = bool(unit.get("silent", False))

    async def action(function_code, _start, address, count, _registers, set_values):
        if silent:
            await asyncio.sleep(3600)
        if delay and (delay_address is None or delay_address == address):
            await asyncio.sleep(delay)
        if set_values is not None:
            say(f"SET {function_code} {address} {json.dumps(list(set_values))}")
        return None

    return action


def bits(values):
    return [SimData(0, values=[bool(v) for v in values], datatype=DataType.BITS)]


def registers(values):
    return [
        SimData(i, values=int(v), datatype=DataType.REGISTERS)
        for i, v in enumerate(values)
    ]


def device(unit):
    return SimDevice(
        id=int(unit["id"]),
        simdata=(
            bits(unit.get("coils", [False])),
            bits(unit.get("discrete", [False])),
            registers(unit.get("holding", [0])),
            registers(unit.get("input", [0])),
        ),
        action=action_for(unit),
    )


def trace_packet(sending, data):
    if sending:
        say(f"SENT {data.hex()}")
    return data


def trace_pdu(sending, pdu):
    if not sending:
        say(f"REQ {pdu.dev_id} {pdu.function_code} {getattr(pdu, 'address', '-')}")
    return pdu


def trace_connect(connected):
    say("CONNECTED" if connected else "DISCONNECTED")


async def main(spec):
    devices = [device(unit) for unit in spec["units"]]
    mode = spec["mode"]
    if mode == "rtu":
        server = ModbusSerialServer(
            devices,
            framer=FramerType.RTU,
            port=spec["path"],
            baudrate=int(spec.get("baud", 19200)),
            trace_packet=trace_packet,
            trace_pdu=trace_pdu,
        )
    else:
        server = ModbusTcpServer(
            devices,
            framer=FramerType.RTU if mode == "rtu-over-tcp" else FramerType.SOCKET,
            address=("127.0.0.1", int(spec.get("port", 0))),
            trace_packet=trace_packet,
            trace_pdu=trace_pdu,
            trace_connect=trace_connect,
        )
    await server.serve_forever(background=True)
    if mode == "rtu":
        say("LISTENING")
    else:
        port = server.transport.sockets[0].getsockname()[1]
        say(f"LISTENING {port}")
    await server.serving


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
