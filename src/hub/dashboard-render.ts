// The dashboard's rendering (page script, run in the browser): the /ws snapshot drawn as one
// section per VM (its agent, its checkpoint timeline, its volumes' cards with state, progress,
// dirty-bitmap heat map, history plots and, with the admin token, their actions), the volumes
// not yet bound to a VM last; banners for an encryption alarm and a journal's power loss.
export const RENDER_JS = `
const fmt=(n)=>{const u=['B','KiB','MiB','GiB','TiB'];let i=0;while(n>=1024&&i<4){n/=1024;i++}return (i?n.toFixed(1):n)+' '+u[i]};
const lag=(ms)=>ms===null?'never in sync':ms<1000?ms+' ms':(ms/1000).toFixed(1)+' s';
const dur=(ms)=>ms<90000?Math.round(ms/1000)+' s':ms<5400000?Math.round(ms/60000)+' min':(ms/3600000).toFixed(1)+' h';
const verified=(r)=>!r?'never':r.state==='running'?'running, '+(100*r.checkedBytes/r.sizeBytes).toFixed(0)+'%':r.state==='failed'?'failed: '+r.error:r.mismatchedRegions?r.mismatchedRegions+' regions differed'+(r.reportOnly?'':' (resynced)'):'equal, '+r.finishedAt;
const esc=(s)=>String(s).replace(/[&<>"]/g,(c)=>({'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c]));
const btn=(act,label,data,cls)=>'<button type="button" class="'+(cls||'')+'" data-act="'+act+'"'+
 Object.keys(data).map((k)=>' data-'+k+'="'+esc(data[k])+'"').join('')+'>'+label+'</button>';
let last=null;
function heat(canvas,cells){const w=cells.length||1;canvas.width=w;canvas.height=1;const c=canvas.getContext('2d');
 const img=c.createImageData(w,1);cells.forEach((d,i)=>{const t=d/100;img.data.set([Math.round(40+210*t),Math.round(185-110*t),Math.round(80-40*t),255],i*4)});c.putImageData(img,0,0)}
function groups(s){const g={};s.volumes.forEach((v)=>{(g[v.vm||'']=g[v.vm||'']||[]).push(v)});
 Object.keys(s.timeline||{}).forEach((k)=>{g[k]=g[k]||[]});
 return Object.keys(g).sort((a,b)=>a===''?1:b===''?-1:a<b?-1:a>b?1:0).map((k)=>[k,g[k]])}
function timeline(vm,s,ax){const cps=((s.timeline||{})[vm]||[]).filter((c)=>c.t>=ax.from);
 const ticks=cps.map((c)=>{const x=((c.t-ax.from)/ax.span*1000).toFixed(1);return '<line class="cp cp-'+esc(c.kind)+'" data-id="'+c.id+'" x1="'+x+'" x2="'+x+'" y1="2" y2="22"><title>#'+c.id+' '+esc(c.kind)+' '+new Date(c.t).toISOString()+(c.label?' '+esc(c.label):'')+'</title></line>'}).join('');
 return '<div class="timeline" data-vm="'+esc(vm)+'"><span class="lbl"><span class="ncp">'+cps.length+'</span> checkpoints in the last '+dur(ax.span)+'</span>'+
  '<svg class="cps" viewBox="0 0 1000 24" preserveAspectRatio="none"><line class="axis" x1="0" x2="1000" y1="12" y2="12"/>'+ticks+'</svg></div>'}
function card(v,ax){const pct=v.sizeBytes?100*(1-v.dirtyBytes/v.sizeBytes):0;const d={volume:v.name};
 return '<div class="card" data-volume="'+esc(v.name)+'">'+
  '<div class="top"><span class="name">'+esc(v.name)+'</span><span class="badge '+esc(v.state)+'">'+esc(v.state)+'</span></div>'+
  '<div class="bar"><div style="width:'+pct.toFixed(1)+'%"></div></div>'+
  '<dl><dt>in sync</dt><dd class="pct">'+pct.toFixed(1)+'%</dd><dt>dirty</dt><dd>'+fmt(v.dirtyBytes)+' of '+fmt(v.sizeBytes)+'</dd>'+
  '<dt>RPO lag</dt><dd>'+lag(v.rpoLagMs)+'</dd><dt>throughput</dt><dd>'+fmt(v.throughputBps)+'/s</dd>'+
  '<dt>pass</dt><dd>'+v.syncPass+'</dd><dt>recovery</dt><dd>'+esc(v.recovery)+'</dd>'+
  '<dt>verify</dt><dd class="verify" style="grid-column:span 3">'+esc(verified(v.verify))+'</dd></dl>'+
  '<canvas class="heat" data-volume="'+esc(v.name)+'" title="dirty bitmap: green clean, red dirty"></canvas>'+plots(v,ax)+
  (v.alarm&&v.alarm.active?'<div class="err alarm">ENCRYPTION ALARM since '+esc(v.alarm.since)+': the guest is overwriting its data with random-looking bytes</div>':'')+
  (v.lastError?'<div class="err">'+esc(v.lastError)+'</div>':'')+
  '<div class="acts">'+(v.state==='paused'?btn('resume','resume',d):btn('pause','pause',d))+btn('verify','verify',d)+
  btn('resize','resize',d)+btn('remove','remove…',d,'danger')+'</div></div>'}
function vmSection(vm,vols,s,ax){const agents=s.agents.filter((a)=>vm&&a.vm===vm);const d={vm:vm};
 const journal=(s.journals||[]).some((j)=>j.vm===vm)||((s.timeline||{})[vm]||[]).length>0;
 const who=!vm?'volumes no agent has attached yet':agents.length?'agent connected since '+esc(agents[0].since):'no agent connected';
 const acts=!vm?'':'<span class="acts">'+(journal?btn('tag','tag checkpoint…',d):'')+btn('verify','verify VM',d)+
  (s.failoverTest||s.failover?'':btn('test-start','failover test…',d,'danger'))+'</span>';
 return '<section class="vm" data-vm="'+esc(vm)+'"><div class="top"><span class="name">'+(vm?esc(vm):'(no VM)')+'</span>'+
  '<span class="lbl">'+vols.length+' volume(s), '+who+'</span>'+acts+'</div>'+(journal?timeline(vm,s,ax):'')+
  '<div class="cards">'+vols.map((v)=>card(v,ax)).join('')+'</div></section>'}
function banners(s){const a=s.volumes.filter((v)=>v.alarm&&v.alarm.active).map((v)=>'<div class="banner alarm-banner" data-volume="'+esc(v.name)+'">ENCRYPTION ALARM on '+esc(v.name)+(v.vm?' of '+esc(v.vm):'')+' since '+esc(v.alarm.since)+': recover to its last-clean checkpoint</div>');
 (s.journals||[]).filter((j)=>j.powerLoss).forEach((j)=>a.push('<div class="banner warn">Journal of '+esc(j.vm)+': '+esc(j.powerLoss.message)+' ('+j.powerLoss.droppedPoints+' dropped at '+esc(j.powerLoss.at)+')</div>'));return a.join('')}
function render(s){last=s;const ax=axis(s);
 document.getElementById('banners').innerHTML=banners(s);
 document.getElementById('mode').textContent=s.failover?'FAILED OVER since '+s.failover.since:s.failoverTest?'failover test running since '+s.failoverTest.startedAt:'';
 document.getElementById('gacts').innerHTML=(s.failoverTest?btn('test-stop','stop failover test…',{},'danger'):s.failover?'':btn('test-start','failover test, every VM…',{},'danger'))+btn('verify','verify all',{});
 document.getElementById('vms').innerHTML=groups(s).map((g)=>vmSection(g[0],g[1],s,ax)).join('');
 document.querySelectorAll('canvas.heat').forEach((c)=>heat(c,s.heat[c.dataset.volume]||[]));
 document.getElementById('agents').textContent=s.agents.length+' agent(s): '+s.agents.map((a)=>a.vm||('session '+a.session)).join(', ');
}
`;
