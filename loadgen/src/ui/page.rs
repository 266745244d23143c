//! The UI's one page: HTML, CSS and JS inline (nothing fetched from another origin); the
//! charts are drawn on `<canvas>` by the page's own few lines of JS. It polls
//! `/api/state` once a second and sends its token with every `POST`.

/// The page for this process's `token` and the scenario's name.
pub fn render(token: &str, scenario: &str) -> String {
    PAGE.replace("{{TITLE}}", &crate::report::escape(scenario))
        .replace("{{TOKEN}}", token)
}

const PAGE: &str = r##"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>loadgen: {{TITLE}}</title>
<style>
body{font:14px system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
header{background:#1d2330;color:#fff;padding:10px 18px;display:flex;gap:24px;align-items:center;flex-wrap:wrap}
header h1{font-size:18px;margin:0}
header .fig{font-size:13px;opacity:.9}
header .fig b{font-size:17px;display:block}
main{padding:14px 18px;display:grid;gap:14px}
section{background:#fff;border-radius:6px;padding:12px 14px;box-shadow:0 1px 2px #0002}
h2{font-size:15px;margin:0 0 8px}
label{display:inline-block;margin:0 12px 6px 0}
input,select{font:inherit;padding:3px 5px;width:9em}
button{font:inherit;padding:5px 14px;border:0;border-radius:4px;background:#2b6cb0;color:#fff;cursor:pointer}
button:disabled{background:#9aa5b1;cursor:default}
#stop{background:#c53030}
.charts{display:grid;grid-template-columns:repeat(auto-fit,minmax(380px,1fr));gap:14px}
canvas{width:100%;height:220px;display:block}
table{border-collapse:collapse;width:100%}
th,td{text-align:right;padding:3px 8px;border-bottom:1px solid #e2e8f0}
th:nth-child(-n+2),td:nth-child(-n+2){text-align:left}
.held{color:#fff;background:#2f855a}
.missed{color:#fff;background:#c53030}
.verdict{display:inline-block;margin:0 6px 6px 0;padding:4px 8px;border-radius:4px}
#error{color:#c53030;font-weight:600}
.legend span{margin-right:12px}
</style></head>
<body>
<header><h1>loadgen: {{TITLE}}</h1>
<div class="fig">phase<b id="phase">idle</b></div>
<div class="fig">users<b id="users_now">0</b></div>
<div class="fig">target<b id="target_now">-</b></div>
<div class="fig">req/s<b id="rps_now">0</b></div>
<div class="fig">failures<b id="fail_now">0%</b></div>
<div class="fig">elapsed<b id="elapsed_now">0s</b></div>
</header>
<main>
<section id="setup"><h2>New run</h2>
<label>Preset <select id="preset"><option value="">(scenario default)</option></select></label>
<label>Users <input id="users" type="number" min="0" placeholder="preset's"></label>
<label>Spawn rate /s <input id="spawn_rate" type="number" min="0" step="any" placeholder="preset's"></label>
<label>Arrival rate /s <input id="arrival_rate" type="number" min="0" step="any" placeholder="open model"></label>
<label>Run time <input id="run_time" placeholder="preset's; e.g. 5m"></label>
<label>Host <input id="host" style="width:16em"></label>
<button id="start">Start</button>
<div id="plan_note"></div>
</section>
<section id="live"><h2>Running</h2>
<label>New <span id="change_what">user count</span> <input id="new_users" type="number" min="0" step="any"></label>
<button id="apply" disabled>Apply</button>
<button id="stop" disabled>Stop</button>
<span id="error"></span>
</section>
<section><h2>Thresholds</h2><div id="verdicts">none</div></section>
<div class="charts">
<section><h2>Requests/s and failures/s</h2><canvas id="chart_rps"></canvas><div class="legend"><span style="color:#2b6cb0">&#9632; req/s</span><span style="color:#c53030">&#9632; failures/s</span></div></section>
<section><h2>Latency (ms)</h2><canvas id="chart_lat"></canvas><div class="legend"><span style="color:#2f855a">&#9632; p50</span><span style="color:#d69e2e">&#9632; p95</span><span style="color:#c53030">&#9632; p99</span></div></section>
<section><h2>Users</h2><canvas id="chart_users"></canvas><div class="legend"><span style="color:#6b46c1">&#9632; users</span></div></section>
</div>
<section><h2>Statistics</h2><table id="stats"><thead><tr><th>Method</th><th>Name</th><th>Requests</th><th>Fails</th><th>Median</th><th>p95</th><th>p99</th><th>Avg</th><th>Max</th><th>req/s</th></tr></thead><tbody></tbody></table></section>
<section><h2>Failures</h2><table id="failures"><thead><tr><th>Method</th><th>Name</th><th>Error</th><th>Count</th></tr></thead><tbody></tbody></table></section>
<section><h2>Reports</h2><div id="downloads">when the run has ended</div></section>
</main>
<script>
"use strict";
const TOKEN = "{{TOKEN}}";
const $ = (id) => document.getElementById(id);
let view = null, presetsLoaded = false;
window.loadgenView = null;
function esc(s){return String(s).replace(/[&<>"']/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));}
function num(x,d){return (x===null||x===undefined||!isFinite(x))?"-":Number(x).toFixed(d);}
async function post(path, body){
  const r = await fetch(path,{method:"POST",headers:{"Content-Type":"application/json","X-Loadgen-Token":TOKEN},body:JSON.stringify(body||{})});
  const j = await r.json().catch(()=>({error:"HTTP "+r.status}));
  $("error").textContent = r.ok ? "" : (j.error||("HTTP "+r.status));
  poll();
  return r.ok;
}
function val(id){const v=$(id).value.trim();return v===""?null:v;}
function numval(id){const v=val(id);return v===null?null:Number(v);}
$("start").onclick = () => post("/api/start",{preset:val("preset"),users:numval("users"),spawn_rate:numval("spawn_rate"),arrival_rate:numval("arrival_rate"),run_time:val("run_time"),host:val("host")});
$("stop").onclick = () => post("/api/stop");
$("apply").onclick = () => {
  const n = numval("new_users"); if(n===null) return;
  post("/api/change", view && view.open ? {arrival_rate:n} : {users:Math.round(n), spawn_rate:numval("spawn_rate")});
};
$("preset").onchange = () => {
  const p = view && view.presets.find(p=>p.name===$("preset").value);
  $("plan_note").textContent = p ? (p.description+" ("+p.plan+")") : (view? view.default_plan : "");
};
function chart(id, series, colors){
  const c = $(id), w = c.clientWidth, h = c.clientHeight, dpr = window.devicePixelRatio||1;
  c.width = w*dpr; c.height = h*dpr;
  const g = c.getContext("2d"); g.scale(dpr,dpr);
  g.fillStyle="#fff"; g.fillRect(0,0,w,h);
  const pts = series[0].length, L=48, B=20, T=8, R=8;
  let max = 0; series.forEach(s=>s.forEach(p=>{if(p[1]>max)max=p[1];}));
  max = max<=0 ? 1 : max*1.1;
  const t0 = pts? series[0][0][0] : 0, t1 = pts? Math.max(series[0][pts-1][0], t0+1) : 1;
  const X = t => L + (t-t0)/(t1-t0)*(w-L-R), Y = v => h-B - v/max*(h-B-T);
  g.strokeStyle="#e2e8f0"; g.fillStyle="#4a5568"; g.font="11px sans-serif"; g.lineWidth=1;
  for(let i=0;i<=4;i++){const v=max*i/4,y=Y(v);g.beginPath();g.moveTo(L,y);g.lineTo(w-R,y);g.stroke();g.fillText(v>=100?v.toFixed(0):v.toFixed(1),4,y+4);}
  g.fillText(t0.toFixed(0)+"s",L,h-5); g.fillText(t1.toFixed(0)+"s",w-R-30,h-5);
  series.forEach((s,i)=>{ if(!s.length) return; g.strokeStyle=colors[i]; g.lineWidth=2; g.beginPath();
    s.forEach((p,j)=>{ j? g.lineTo(X(p[0]),Y(p[1])) : g.moveTo(X(p[0]),Y(p[1])); }); g.stroke(); });
}
function render(v){
  view = v; window.loadgenView = v;
  if(!presetsLoaded){
    presetsLoaded = true;
    v.presets.forEach(p=>{const o=document.createElement("option");o.value=p.name;o.textContent=p.name;$("preset").appendChild(o);});
    if(v.host) $("host").value = v.host;
    $("plan_note").textContent = v.default_plan;
  }
  const running = v.phase==="running"||v.phase==="stopping";
  $("phase").textContent = v.phase;
  $("start").disabled = running; $("stop").disabled = v.phase!=="running"; $("apply").disabled = v.phase!=="running";
  $("change_what").textContent = v.open ? "arrival rate /s" : "user count";
  if(v.error) $("error").textContent = v.error;
  $("users_now").textContent = v.users===undefined ? "0" : v.users;
  $("target_now").textContent = v.target===undefined ? "-" : num(v.target, v.open?1:0);
  const r = v.run;
  if(!r){ return; }
  const s = r.series, last = s.length ? s[s.length-1] : null;
  $("rps_now").textContent = last ? last[1] : 0;
  $("fail_now").textContent = num(r.total.requests ? r.total.failures*100/r.total.requests : 0, 2)+"%";
  $("elapsed_now").textContent = num(r.elapsed,0)+"s";
  chart("chart_rps",[s.map(p=>[p[0],p[1]]), s.map(p=>[p[0],p[2]])],["#2b6cb0","#c53030"]);
  chart("chart_lat",[s.map(p=>[p[0],p[3]]), s.map(p=>[p[0],p[4]]), s.map(p=>[p[0],p[5]])],["#2f855a","#d69e2e","#c53030"]);
  chart("chart_users",[s.map(p=>[p[0],p[6]])],["#6b46c1"]);
  const row = e => "<tr><td>"+esc(e.method)+"</td><td>"+esc(e.name)+"</td><td>"+e.requests+"</td><td>"+e.failures+"</td><td>"+num(e.median,1)+"</td><td>"+num(e.p95,1)+"</td><td>"+num(e.p99,1)+"</td><td>"+num(e.avg,1)+"</td><td>"+num(e.max,1)+"</td><td>"+num(e.rps,1)+"</td></tr>";
  $("stats").tBodies[0].innerHTML = r.stats.map(row).join("") + row(Object.assign({}, r.total, {method:"", name:"Aggregated"}));
  $("failures").tBodies[0].innerHTML = r.failures.map(f=>"<tr><td>"+esc(f.method)+"</td><td>"+esc(f.name)+"</td><td>"+esc(f.error)+"</td><td>"+f.occurrences+"</td></tr>").join("");
  $("verdicts").innerHTML = r.verdicts.length ? r.verdicts.map(x=>"<span class=\"verdict "+(x.held?"held":"missed")+"\" title=\""+esc(x.detail)+"\">"+esc(x.threshold)+": "+esc(x.detail)+"</span>").join("") : "none";
  $("downloads").innerHTML = v.downloads ? v.downloads.map(d=>"<a download href=\""+esc(d.href)+"\">"+esc(d.name)+"</a>").join(" &middot; ") : "when the run has ended";
}
async function poll(){
  try { const r = await fetch("/api/state",{cache:"no-store"}); if(r.ok) render(await r.json()); }
  catch(e){ $("phase").textContent = "disconnected"; }
}
poll(); setInterval(poll, 1000);
</script>
</body></html>
"##;
