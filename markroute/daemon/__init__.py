"""`markroute run`: the daemon that keeps the applied config true while uplinks come and go.

Modules, in the order a failover passes through them:

* `probes`: ICMP, TCP and ARP probes pinned to their uplink (mark, device, source);
* `monitor`: rounds of probes on a schedule, per uplink;
* `health`: the state machine (up, degraded, down) with hysteresis and flap damping;
* `netlink`: link, address and route events from the kernel, acted on at once;
* `failover`: the one-transaction chain rewrite and the conntrack clean-up;
* `service`: the loop tying them together, signals, reload, resync;
* `record`, `metrics`, `hooks`, `logs`: what the daemon tells the world (status,
  Prometheus, `on_change`, journald), `reactor`: the single-threaded event loop.
"""
