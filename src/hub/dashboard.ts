// The live dashboard: one static page, no framework. It opens /ws and redraws on each push.
export const DASHBOARD_HTML = `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rephub</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>
:root{--bg:#0f1419;--card:#182029;--fg:#d8dee6;--dim:#8a97a6;--ok:#3fb950;--sync:#d29922;--bad:#f85149;--info:#58a6ff}
*{box-sizing:border-box}body{margin:0;font:14px/1.4 system-ui,sans-serif;background:var(--bg);color:var(--fg)}
header{display:flex;gap:16px;align-items:baseline;padding:14px 20px;border-bottom:1px solid #263040}
h1{font-size:18px;margin:0}#conn{color:var(--dim)}#mode{color:var(--sync);font-weight:600}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:14px;padding:16px 20px}
.card{background:var(--card);border-radius:8px;padding:14px}
.top{display:flex;justify-content:space-between;align-items:center}.name{font-size:16px;font-weight:600}
.badge{padding:2px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#0f1419}
.protecting{background:var(--ok)}.syncing{background:var(--sync)}.degraded,.error{background:var(--bad)}
.stopped,.unprotected{background:var(--dim)}.failed-over{background:var(--info)}
.bar{height:8px;background:#263040;border-radius:4px;margin:10px 0 6px;overflow:hidden}.bar>div{height:100%;background:var(--ok)}
dl{display:grid;grid-template-columns:auto 1fr auto 1fr;gap:2px 10px;margin:8px 0}dt{color:var(--dim)}dd{margin:0}
canvas{width:100%;height:28px;border-radius:4px;background:#263040;image-rendering:pixelated}
.err{color:var(--bad);margin-top:6px}footer{color:var(--dim);padding:0 20px 16px}
</style></head><body>
<header><h1>rephub</h1><span id="conn">connecting…</span><span id="mode"></span></header>
<main id="vols"></main><footer id="agents"></footer>
<script>
const fmt=(n)=>{const u=['B','KiB','MiB','GiB','TiB'];let i=0;while(n>=1024&&i<4){n/=1024;i++}return (i?n.toFixed(1):n)+' '+u[i]};
const lag=(ms)=>ms===null?'never in sync':ms<1000?ms+' ms':(ms/1000).toFixed(1)+' s';
const verified=(r)=>!r?'never':r.state==='running'?'running, '+(100*r.checkedBytes/r.sizeBytes).toFixed(0)+'%':r.state==='failed'?'failed: '+r.error:r.mismatchedRegions?r.mismatchedRegions+' regions differed'+(r.reportOnly?'':' (resynced)'):'equal, '+r.finishedAt;
const esc=(s)=>String(s).replace(/[&<>"]/g,(c)=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function heat(canvas,cells){const w=cells.length||1;canvas.width=w;canvas.height=1;const c=canvas.getContext('2d');
 const img=c.createImageData(w,1);cells.forEach((d,i)=>{const t=d/100;img.data.set([Math.round(40+210*t),Math.round(185-110*t),Math.round(80-40*t),255],i*4)});c.putImageData(img,0,0)}
function render(s){
 document.getElementById('mode').textContent=s.failover?'FAILED OVER since '+s.failover.since:s.failoverTest?'failover test running since '+s.failoverTest.startedAt:'';
 const main=document.getElementById('vols');
 main.innerHTML=s.volumes.map((v)=>{const pct=v.sizeBytes?100*(1-v.dirtyBytes/v.sizeBytes):0;return '<div class="card" data-volume="'+esc(v.name)+'">'+
  '<div class="top"><span class="name">'+esc(v.name)+' <span style="color:var(--dim);font-weight:400">'+esc(v.vm||'')+'</span></span><span class="badge '+esc(v.state)+'">'+esc(v.state)+'</span></div>'+
  '<div class="bar"><div style="width:'+pct.toFixed(1)+'%"></div></div>'+
  '<dl><dt>in sync</dt><dd class="pct">'+pct.toFixed(1)+'%</dd><dt>dirty</dt><dd>'+fmt(v.dirtyBytes)+' of '+fmt(v.sizeBytes)+'</dd>'+
  '<dt>RPO lag</dt><dd>'+lag(v.rpoLagMs)+'</dd><dt>throughput</dt><dd>'+fmt(v.throughputBps)+'/s</dd>'+
  '<dt>pass</dt><dd>'+v.syncPass+'</dd><dt>recovery</dt><dd>'+esc(v.recovery)+'</dd>'+
  '<dt>verify</dt><dd class="verify" style="grid-column:span 3">'+esc(verified(v.verify))+'</dd></dl>'+
  '<canvas title="dirty bitmap: green clean, red dirty"></canvas>'+(v.alarm&&v.alarm.active?'<div class="err alarm">ENCRYPTION ALARM since '+esc(v.alarm.since)+': the guest is overwriting its data with random-looking bytes</div>':'')+(v.lastError?'<div class="err">'+esc(v.lastError)+'</div>':'')+'</div>'}).join('');
 main.querySelectorAll('canvas').forEach((c,i)=>heat(c,s.heat[s.volumes[i].name]||[]));
 document.getElementById('agents').textContent=s.agents.length+' agent(s): '+s.agents.map((a)=>a.vm||('session '+a.session)).join(', ');
}
function connect(){const ws=new WebSocket((location.protocol==='https:'?'wss://':'ws://')+location.host+'/ws');
 ws.onopen=()=>document.getElementById('conn').textContent='live';
 ws.onmessage=(e)=>render(JSON.parse(e.data));
 ws.onclose=()=>{document.getElementById('conn').textContent='reconnecting…';setTimeout(connect,1000)}}
connect();
</script></body></html>`;
