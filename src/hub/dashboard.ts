// The live dashboard: one static page, no framework. It opens /ws and redraws on each push: a
// banner for an active encryption alarm (and a journal that lost its points to a power cut),
// each VM's checkpoints on a timeline with its volumes' RPO lag and throughput of the last hour
// plotted under it on the same time axis, and a card per volume.
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
.banner{margin:12px 20px 0;padding:10px 14px;border-radius:8px;background:var(--bad);color:#0f1419;font-weight:600}.banner.warn{background:var(--sync)}
#timelines{display:grid;gap:14px;padding:16px 20px 0}.lbl{color:var(--dim);font-size:12px}
.timeline svg{display:block;width:100%;background:#263040;border-radius:4px;margin:4px 0}.cps{height:24px}.hist svg{height:40px}
.axis{stroke:#3a4656;stroke-width:1}.cp{stroke:var(--info);stroke-width:3}.cp-flush{stroke:var(--ok)}.cp-tag{stroke:#d2a8ff}.cp-last-clean{stroke:var(--bad);stroke-width:5}
.rpo{stroke:var(--sync);stroke-width:2;vector-effect:non-scaling-stroke}.tput{stroke:var(--info);stroke-width:2;vector-effect:non-scaling-stroke}
</style></head><body>
<header><h1>rephub</h1><span id="conn">connecting…</span><span id="mode"></span></header>
<div id="banners"></div><section id="timelines"></section>
<main id="vols"></main><footer id="agents"></footer>
<script>
const fmt=(n)=>{const u=['B','KiB','MiB','GiB','TiB'];let i=0;while(n>=1024&&i<4){n/=1024;i++}return (i?n.toFixed(1):n)+' '+u[i]};
const lag=(ms)=>ms===null?'never in sync':ms<1000?ms+' ms':(ms/1000).toFixed(1)+' s';
const verified=(r)=>!r?'never':r.state==='running'?'running, '+(100*r.checkedBytes/r.sizeBytes).toFixed(0)+'%':r.state==='failed'?'failed: '+r.error:r.mismatchedRegions?r.mismatchedRegions+' regions differed'+(r.reportOnly?'':' (resynced)'):'equal, '+r.finishedAt;
const esc=(s)=>String(s).replace(/[&<>"]/g,(c)=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
function heat(canvas,cells){const w=cells.length||1;canvas.width=w;canvas.height=1;const c=canvas.getContext('2d');
 const img=c.createImageData(w,1);cells.forEach((d,i)=>{const t=d/100;img.data.set([Math.round(40+210*t),Math.round(185-110*t),Math.round(80-40*t),255],i*4)});c.putImageData(img,0,0)}
function spark(vals,t0,step,from,span,cls){let max=0;vals.forEach((v)=>{if(v!==null&&v>max)max=v});const pts=[];
 vals.forEach((v,i)=>{const x=(t0+i*step-from)/span*1000;if(v===null||x<0)return;pts.push(x.toFixed(1)+','+(38-(max?v/max:0)*36).toFixed(1))});
 return {max,svg:'<polyline class="'+cls+'" fill="none" points="'+pts.join(' ')+'"/>'}}
function timelines(s){const now=s.at,tl=s.timeline||{},hist=s.history||{},vms={};
 s.volumes.forEach((v)=>{if(v.vm)(vms[v.vm]=vms[v.vm]||[]).push(v)});Object.keys(tl).forEach((k)=>{vms[k]=vms[k]||[]});
 let oldest=now-60000;Object.values(hist).forEach((h)=>{if(h.t0<oldest)oldest=h.t0});Object.values(tl).forEach((c)=>{if(c.length&&c[0].t<oldest)oldest=c[0].t});
 const from=Math.max(oldest,now-3600000),span=Math.max(1,now-from);
 return Object.keys(vms).map((vm)=>{const cps=tl[vm]||[];
  const ticks=cps.map((c)=>{const x=((c.t-from)/span*1000).toFixed(1);return '<line class="cp cp-'+esc(c.kind)+'" data-id="'+c.id+'" x1="'+x+'" x2="'+x+'" y1="2" y2="22"><title>#'+c.id+' '+esc(c.kind)+' '+new Date(c.t).toISOString()+(c.label?' '+esc(c.label):'')+'</title></line>'}).join('');
  const rows=vms[vm].map((v)=>{const h=hist[v.name];if(!h)return '';const r=spark(h.rpoLagMs,h.t0,h.stepMs,from,span,'rpo'),t=spark(h.throughputBps,h.t0,h.stepMs,from,span,'tput');
   return '<div class="hist" data-volume="'+esc(v.name)+'"><span class="lbl">'+esc(v.name)+' RPO lag, max '+lag(r.max)+'</span><svg viewBox="0 0 1000 40" preserveAspectRatio="none">'+r.svg+'</svg>'+
    '<span class="lbl">'+esc(v.name)+' throughput, max '+fmt(t.max)+'/s</span><svg viewBox="0 0 1000 40" preserveAspectRatio="none">'+t.svg+'</svg></div>'}).join('');
  return '<div class="card timeline" data-vm="'+esc(vm)+'"><div class="top"><span class="name">'+esc(vm)+'</span><span class="lbl"><span class="ncp">'+cps.length+'</span> checkpoints in the last '+lag(span)+'</span></div>'+
   '<svg class="cps" viewBox="0 0 1000 24" preserveAspectRatio="none"><line class="axis" x1="0" x2="1000" y1="12" y2="12"/>'+ticks+'</svg>'+rows+'</div>'}).join('')}
function banners(s){const a=s.volumes.filter((v)=>v.alarm&&v.alarm.active).map((v)=>'<div class="banner alarm-banner" data-volume="'+esc(v.name)+'">ENCRYPTION ALARM on '+esc(v.name)+(v.vm?' of '+esc(v.vm):'')+' since '+esc(v.alarm.since)+': recover to its last-clean checkpoint</div>');
 (s.journals||[]).filter((j)=>j.powerLoss).forEach((j)=>a.push('<div class="banner warn">Journal of '+esc(j.vm)+': '+esc(j.powerLoss.message)+' ('+j.powerLoss.droppedPoints+' dropped at '+esc(j.powerLoss.at)+')</div>'));return a.join('')}
function render(s){
 document.getElementById('banners').innerHTML=banners(s);
 document.getElementById('timelines').innerHTML=timelines(s);
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
