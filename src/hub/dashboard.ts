// The live dashboard: one static page, no framework, no external resource. It opens /ws and
// redraws on each push, polls GET /history for the plots, and, with the admin token, posts the
// operator actions. This file is the page's frame and style; its scripts are
// dashboard-render.ts (VM sections, volume cards, timelines, banners), dashboard-plots.ts (the
// history plots) and dashboard-actions.ts (the token and the actions).
import { ACTIONS_JS } from './dashboard-actions';
import { PLOTS_JS } from './dashboard-plots';
import { RENDER_JS } from './dashboard-render';

const STYLE = `
:root{--bg:#0f1419;--card:#182029;--fg:#d8dee6;--dim:#8a97a6;--ok:#3fb950;--sync:#d29922;--bad:#f85149;--info:#58a6ff}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,sans-serif;background:var(--bg);color:var(--fg)}
header{display:flex;flex-wrap:wrap;gap:16px;align-items:center;padding:12px 20px;border-bottom:1px solid #263040}
h1{font-size:18px;margin:0}#conn{color:var(--dim)}#mode{color:var(--sync);font-weight:600}.grow{flex:1}
#msg{padding:0 20px;min-height:20px;margin-top:8px}#msg.err{color:var(--bad)}#msg.ok{color:var(--ok)}#msg.info,#msg.busy{color:var(--dim)}
button,select,input{font:inherit;color:var(--fg);background:#263040;border:1px solid #3a4656;border-radius:6px;padding:2px 8px}
button{cursor:pointer}button:hover{border-color:var(--info)}button.danger:hover{border-color:var(--bad)}
.acts{display:none;gap:6px;flex-wrap:wrap}body.op .acts{display:flex}body.op #tokform,body:not(.op) #opon{display:none}
section.vm{border:1px solid #263040;border-radius:10px;padding:12px;margin:12px 20px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px;margin-top:10px}
.card{background:var(--card);border-radius:8px;padding:14px}.card .acts{margin-top:8px}
.top{display:flex;gap:12px;justify-content:space-between;align-items:center}.name{font-size:16px;font-weight:600}
.badge{padding:2px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#0f1419}
.protecting{background:var(--ok)}.syncing{background:var(--sync)}.degraded,.error{background:var(--bad)}
.stopped,.unprotected,.paused{background:var(--dim)}.failed-over{background:var(--info)}
.bar{height:8px;background:#263040;border-radius:4px;margin:10px 0 6px;overflow:hidden}.bar>div{height:100%;background:var(--ok)}
dl{display:grid;grid-template-columns:auto 1fr auto 1fr;gap:2px 10px;margin:8px 0}dt{color:var(--dim)}dd{margin:0}
canvas{width:100%;height:28px;border-radius:4px;background:#263040;image-rendering:pixelated}
.err{color:var(--bad);margin-top:6px}footer{color:var(--dim);padding:0 20px 16px}
.banner{margin:12px 20px 0;padding:10px 14px;border-radius:8px;background:var(--bad);color:#0f1419;font-weight:600}.banner.warn{background:var(--sync)}
.lbl{color:var(--dim);font-size:12px}.timeline{margin-top:6px}
svg{display:block;width:100%;background:#263040;border-radius:4px;margin:2px 0 4px}.cps{height:24px}.plot svg{height:32px}
.axis{stroke:#3a4656;stroke-width:1}.cp{stroke:var(--info);stroke-width:3}.cp-flush{stroke:var(--ok)}.cp-tag{stroke:#d2a8ff}.cp-last-clean{stroke:var(--bad);stroke-width:5}
polyline{stroke-width:2;vector-effect:non-scaling-stroke}.rpo{stroke:var(--sync)}.tput{stroke:var(--info)}.dirty{stroke:var(--bad)}
`;

export const DASHBOARD_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rephub</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>${STYLE}</style></head><body>
<header><h1>rephub</h1><span id="conn">connecting…</span><span id="mode"></span><span class="grow"></span>
<label class="lbl">history <select id="span"><option value="5m">5 min</option><option value="15m" selected>15 min</option><option value="1h">1 h</option></select></label>
<span id="gacts" class="acts"></span>
<form id="tokform"><input id="token" type="password" autocomplete="off" placeholder="admin token" aria-label="admin token"> <button>unlock actions</button></form>
<span id="opon" class="lbl">operator actions on <button id="forget" type="button">forget token</button></span></header>
<div id="msg" role="status"></div><div id="banners"></div>
<main id="vms"></main><footer id="agents"></footer>
<script>
${RENDER_JS}
${PLOTS_JS}
${ACTIONS_JS}
function connect(){const ws=new WebSocket((location.protocol==='https:'?'wss://':'ws://')+location.host+'/ws');
 ws.onopen=()=>document.getElementById('conn').textContent='live';
 ws.onmessage=(e)=>render(JSON.parse(e.data));
 ws.onclose=()=>{document.getElementById('conn').textContent='reconnecting…';setTimeout(connect,1000)}}
connect();
fetchHistory();
</script></body></html>`;
