// The dashboard's history plots (page script, run in the browser): it polls GET /history
// (history-api.ts) every few seconds for the chosen span and draws each volume's RPO lag,
// throughput and dirty bytes as inline SVG polylines on the time axis its VM's checkpoint
// timeline uses. Each plot's SVG says how many points it drew (data-points) and its maximum.
export const PLOTS_JS = `
const SPANS={'5m':300000,'15m':900000,'1h':3600000};
const HISTORY_POLL_MS=2000,HISTORY_POINTS=300;
let hist=null,span='15m',histTimer=null;
function axis(s){const now=s.at;let oldest=now-60000;
 if(hist)Object.values(hist.volumes).forEach((h)=>{if(h.t0<oldest)oldest=h.t0});
 Object.values(s.timeline||{}).forEach((c)=>{if(c.length&&c[0].t<oldest)oldest=c[0].t});
 const from=Math.max(oldest,now-SPANS[span]);return {from:from,span:Math.max(1,now-from)}}
function plot(label,cls,vals,h,ax,show){let max=0,last=null;const pts=[];
 vals.forEach((v)=>{if(v!==null&&v>max)max=v});
 vals.forEach((v,i)=>{if(v===null)return;last=v;const x=(h.t0+i*h.stepMs-ax.from)/ax.span*1000;if(x<0)return;
  pts.push(x.toFixed(1)+','+(38-(max?v/max:0)*36).toFixed(1))});
 return '<div class="plot" data-series="'+cls+'"><span class="lbl">'+label+' '+(last===null?'-':show(last))+', max '+show(max)+'</span>'+
  '<svg viewBox="0 0 1000 40" preserveAspectRatio="none" data-points="'+pts.length+'" data-max="'+max+'">'+
  '<polyline class="'+cls+'" fill="none" points="'+pts.join(' ')+'"/></svg></div>'}
function plots(v,ax){const h=hist&&hist.volumes[v.name];
 if(!h)return '<div class="plots" data-volume="'+esc(v.name)+'"><span class="lbl">no history yet</span></div>';
 return '<div class="plots" data-volume="'+esc(v.name)+'">'+plot('RPO lag','rpo',h.rpoLagMs,h,ax,lag)+
  plot('throughput','tput',h.throughputBps,h,ax,(n)=>fmt(n)+'/s')+plot('dirty','dirty',h.dirtyBytes,h,ax,fmt)+'</div>'}
async function fetchHistory(){clearTimeout(histTimer);
 try{const r=await fetch('/history?span='+span+'&points='+HISTORY_POINTS);if(r.ok){hist=await r.json();if(last)render(last)}}
 catch(e){}
 histTimer=setTimeout(fetchHistory,HISTORY_POLL_MS)}
document.getElementById('span').addEventListener('change',(e)=>{span=e.target.value;fetchHistory()});
`;
