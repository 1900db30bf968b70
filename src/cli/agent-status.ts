// `rephub-agent status` as text: the hub link, the send queue, and a line per volume with its
// state (protected, refused, waiting, disconnected), then why each refused volume was refused,
// and the backlog bound (--max-lag) when it has held write replies.
import { fmt, table } from './format';

interface AgentVolumeView {
  name: string;
  state?: string;
  volumeId: number;
  sizeBytes: number;
  dirtyBytes: number;
  logDirtyBytes: number;
  refusal?: { cause: string; at: string } | null;
}

export function renderAgentStatus(st: any): string {
  const vols: AgentVolumeView[] = st.volumes ?? [];
  const out = [
    `VM ${st.vm}: hub ${st.connected ? 'connected' : 'NOT connected'}, send queue ${fmt(st.queueBytes)}, ${st.pendingWrites} writes awaiting the hub's ack, ${st.overflowWrites} overflowed into dirty regions`,
  ];
  if (st.refusal) out.push(`hub refused this agent at ${st.refusal.at}: ${st.refusal.cause}`);
  const lb = st.lagBound;
  if (lb && lb.maxLagMs > 0 && (lb.holding || lb.heldWrites > 0))
    out.push(
      `--max-lag ${lb.maxLagMs} ms: backlog ${fmt(lb.backlogBytes)} of ${fmt(lb.boundBytes)} allowed, ${lb.holding ? `${lb.heldNow} write replies waiting now` : 'not holding'}; ${lb.heldWrites} held so far, longest ${lb.maxWaitMs} ms${lb.queueHolds ? `; held ${lb.queueHolds} times for the send queue (over ${fmt(lb.queueHoldBytes)})` : ''}`,
    );
  out.push(
    table([
      ['VOLUME', 'STATE', 'VOLUME ID', 'SIZE', 'DIRTY', 'IN LOG FILE'],
      ...vols.map((v) => [
        v.name,
        v.state ?? '-',
        v.volumeId >= 0 ? String(v.volumeId) : '-', // the hub's id on this link: none unless protected
        fmt(v.sizeBytes),
        fmt(v.dirtyBytes),
        fmt(v.logDirtyBytes),
      ]),
    ]),
  );
  for (const v of vols) if (v.refusal) out.push(`${v.name} refused at ${v.refusal.at}: ${v.refusal.cause}`);
  return out.join('\n') + '\n';
}
