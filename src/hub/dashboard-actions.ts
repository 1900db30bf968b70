// The dashboard's operator actions (page script, run in the browser): pause, resume, resize and
// remove a volume, verify, failover test start and stop, a checkpoint tag. The admin token is
// asked for once and kept in sessionStorage (this tab only; never in a URL), sent as
// "Authorization: Bearer"; the hub checks it (http-api.ts's operatorGate), the page only hides
// the buttons without it. The server's error text is shown as it is (401, 409, 400); a 401
// forgets the token. Remove and the failover test ask for confirmation first.
export const ACTIONS_JS = `
const TOKEN_KEY='rephub-admin-token';
const ACTIONS={
 pause:(d)=>({path:'/volume/pause',body:{volume:d.volume},what:'pause '+d.volume}),
 resume:(d)=>({path:'/volume/resume',body:{volume:d.volume},what:'resume '+d.volume}),
 resize:(d)=>({path:'/volume/resize',body:{volume:d.volume},what:'resize '+d.volume}),
 remove:(d)=>({path:'/volume/remove',body:{volume:d.volume},what:'remove '+d.volume,
  ask:'Stop protecting volume '+d.volume+'? Replication of it stops; the hub keeps its recovery file.'}),
 verify:(d)=>({path:'/verify',body:d.volume?{volume:d.volume}:d.vm?{vm:d.vm}:{},what:'verify '+(d.volume||d.vm||'every volume')}),
 'test-start':(d)=>({path:'/failover-test/start',body:d.vm?{vm:d.vm}:{},what:'failover test start'+(d.vm?' of '+d.vm:''),
  ask:'Start a failover test'+(d.vm?' of VM '+d.vm:' of every VM')+'? Its views are exported over NBD; replication goes on.'}),
 'test-stop':()=>({path:'/failover-test/stop',body:{},what:'failover test stop',
  ask:'Stop the failover test? What the test VM wrote to its views is thrown away.'}),
 tag:(d)=>{const label=prompt('Label of the next consistent checkpoint of '+d.vm+' (for example: before upgrade)');
  return label?{path:'/checkpoint',body:{vm:d.vm,label:label},what:'checkpoint tag "'+label+'" of '+d.vm}:null},
};
function token(){try{return sessionStorage.getItem(TOKEN_KEY)}catch(e){return null}}
function opMode(){document.body.classList.toggle('op',!!token())}
function note(kind,text,code){const m=document.getElementById('msg');m.className=kind;m.textContent=text;m.dataset.code=code||''}
function summary(j){if(!j)return '';if(typeof j.state==='string')return ', now '+j.state;
 if(j.checkpoint)return ', checkpoint #'+j.checkpoint.id;if(j.pending)return ', at the next consistent point';return ''}
async function post(a){const t=token();if(!t)return note('err',a.what+': enter the admin token first');
 note('busy',a.what+'…');let r,j={};
 try{r=await fetch(a.path,{method:'POST',headers:{'content-type':'application/json',authorization:'Bearer '+t},body:JSON.stringify(a.body)});
  j=await r.json().catch(()=>({}))}
 catch(e){return note('err',a.what+' failed: '+e.message)}
 if(r.status===401){sessionStorage.removeItem(TOKEN_KEY);opMode()}
 if(!r.ok)return note('err',a.what+' refused ('+r.status+'): '+(j.error||r.statusText),r.status);
 note('ok',a.what+': done'+summary(j),r.status)}
document.addEventListener('click',(e)=>{const b=e.target.closest('button[data-act]');if(!b)return;
 const mk=ACTIONS[b.dataset.act];const a=mk&&mk(b.dataset);if(!a)return;
 if(a.ask&&!confirm(a.ask))return note('info',a.what+': cancelled');post(a)});
document.getElementById('tokform').addEventListener('submit',(e)=>{e.preventDefault();const i=document.getElementById('token');
 const v=i.value.trim();i.value='';if(!v)return;sessionStorage.setItem(TOKEN_KEY,v);opMode();
 note('info','admin token kept for this tab; the hub checks it on each action')});
document.getElementById('forget').addEventListener('click',()=>{sessionStorage.removeItem(TOKEN_KEY);opMode();note('info','admin token forgotten: read-only')});
opMode();
`;
