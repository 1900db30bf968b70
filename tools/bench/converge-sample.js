// converge-sample.js AGENT_HTTP_PORT HUB_HTTP_PORT STOP_FILE [T0_MS]: one line per 100 ms of
// where un-replicated bytes are (tools/bench/converge-timeline.sh): the agent's link queue (q),
// writes awaiting an ack (pend), overflowed writes (ovf), mirrored MiB, its dirty log, the resync
// governor (rate, held answers, sent), and the hub's dirty bitmap (owed regions), bytes applied,
// bytes resynced, RPO lag; with the backlog bound (--max-lag): backlog/bound MiB, drain MiB/s,
// whether it holds, replies held and capped so far. Stops when STOP_FILE exists. MiB unless named.
const [ap, hp, stopFile] = process.argv.slice(2);
const fs = require('fs');
const t0 = Number(process.argv[5] || Date.now());
const get = async (p) => (await fetch(`http://127.0.0.1:${p}/status`)).json();
function find(o, k) {
  if (o && typeof o === 'object') {
    if (k in o && 'bytesApplied' in o) return o;
    for (const v of Object.values(o)) {
      const r = find(v, k);
      if (r) return r;
    }
  }
  return null;
}
(async () => {
  for (;;) {
    if (fs.existsSync(stopFile)) break;
    try {
      const [a, h] = await Promise.all([get(ap), get(hp)]);
      const r = find(h, 'dirtyBytes') || {};
      const M = (x) => (x / 1048576).toFixed(1);
      console.log(
        `t=${((Date.now() - t0) / 1000).toFixed(2)} A q=${M(a.queueBytes)} pend=${a.pendingWrites} ovf=${a.overflowWrites} mir=${M(a.mirroredBytes)} dirty=${M(a.volumes[0].dirtyBytes)} rate=${M(a.resync.rateBytesPerSec)} held=${M(a.resync.heldBytes)} rsent=${M(a.resync.sentBytes)} lag=${a.ackLagMs}${a.lagBound ? ` LB ${M(a.lagBound.backlogBytes)}/${M(a.lagBound.boundBytes)} drain=${M(a.lagBound.drainBytesPerSec)} hold=${a.lagBound.holding ? 1 : 0} held=${a.lagBound.heldWrites} cap=${a.lagBound.cappedWrites}` : ''} | H dirty=${M(r.dirtyBytes)} appl=${M(r.bytesApplied)} sync=${M(r.syncBytes)} rpo=${r.rpoLagMs}`,
      );
    } catch (e) {
      console.log('err', e.message);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
})();
