/**
 * The dashboard's two pages, self-contained (inline CSS and JS under a per-response CSP nonce, no
 * external assets: apps may run air-gapped). The live page polls `<base>/api/cluster` every second
 * and renders every value with textContent (registry strings are untrusted data, never markup).
 */

const esc = (s: string): string =>
  s.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);

const CSS = `
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1b1f24;background:#f5f6f8}
header{display:flex;align-items:center;gap:12px;flex-wrap:wrap;padding:10px 20px;background:#1f2a37;color:#fff}
header h1{font-size:17px;margin:0 12px 0 0}
header .sub{color:#c9d1d9;font-size:13px}
header .sp{flex:1}
main{padding:14px 20px;max-width:1500px;margin:0 auto}
h2{font-size:15px;margin:18px 0 8px}
button{font:inherit;padding:5px 12px;border:1px solid #8c959f;border-radius:6px;background:#fff;color:#1b1f24;cursor:pointer}
header button{background:#2d3b4c;color:#fff;border-color:#6e7b8b}
button[aria-pressed=true]{background:#ffe08a;color:#1b1f24}
:focus-visible{outline:3px solid #ffb000;outline-offset:2px}
.cards{display:flex;gap:10px;flex-wrap:wrap;margin:0;padding:0;list-style:none}
.cards li{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:8px 14px;min-width:130px}
.cards b{display:block;font-size:20px}
.cards span{color:#57606a;font-size:12px}
.scroll{overflow-x:auto;background:#fff;border:1px solid #d0d7de;border-radius:8px}
table{border-collapse:collapse;width:100%;font-size:13px}
caption{text-align:left;padding:8px 10px;color:#57606a}
th,td{padding:6px 10px;border-top:1px solid #eaeef2;text-align:left;white-space:nowrap;vertical-align:top}
thead th{background:#f6f8fa;font-weight:600;border-top:0}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
tr.down td,tr.down th{background:#fff0f0}
tr.down td.n{color:#6e7781}
th .small{font-weight:400}
.small{color:#57606a;font-size:12px}
.tag{display:inline-block;padding:0 7px;border-radius:10px;font-size:12px;font-weight:600;border:1px solid transparent}
.ok{background:#dafbe1;color:#116329}.bad{background:#ffebe9;color:#a40e26;border-color:#ff8182}
.warn{background:#fff8c5;color:#7d4e00}.info{background:#ddf4ff;color:#0a3069}
.bar{display:inline-block;width:60px;height:8px;background:#eaeef2;border-radius:4px;margin-left:6px;vertical-align:middle;overflow:hidden}
.bar i{display:block;height:100%;background:#0969da}
.grid{display:grid;grid-template-columns:minmax(0,3fr) minmax(280px,2fr);gap:16px}
@media (max-width:1000px){.grid{grid-template-columns:1fr}}
.panel{background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:10px}
svg{width:100%;height:auto;display:block}
.sw{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:6px}
.legend{display:flex;gap:14px;flex-wrap:wrap;margin:6px 0 0;padding:0;list-style:none;font-size:13px}
.legend i{display:inline-block;width:14px;height:4px;margin-right:5px;vertical-align:middle}
ol.ev{list-style:none;margin:0;padding:0;max-height:300px;overflow-y:auto;font-size:13px}
ol.ev li{padding:4px 2px;border-top:1px solid #eaeef2}
ol.ev time{color:#57606a;font-variant-numeric:tabular-nums;margin-right:6px}
#banner{display:none;margin:0 0 10px;padding:8px 12px;border-radius:6px;background:#fff8c5;border:1px solid #d4a72c}
#banner.on{display:block}
form.login{max-width:340px;margin:12vh auto;background:#fff;border:1px solid #d0d7de;border-radius:8px;padding:20px 24px}
form.login h1{font-size:18px;margin:0 0 14px}
form.login label{display:block;font-weight:600;margin-bottom:4px}
form.login input{width:100%;font:inherit;padding:7px 9px;border:1px solid #8c959f;border-radius:6px;margin-bottom:12px}
.err{color:#a40e26;margin:0 0 10px}
`;

function shell(title: string, nonce: string, body: string, base: string): string {
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="same-origin"><title>${esc(title)}</title><style nonce="${nonce}">${CSS}</style></head>
<body data-base="${esc(base)}">${body}</body></html>`;
}

export function loginPage(o: { base: string; nonce: string; error: string | null }): string {
  return shell('ddp-cluster: log in', o.nonce, `<main><form class="login" method="post" action="${esc(o.base)}/login">
<h1>ddp-cluster dashboard</h1>${o.error ? `<p class="err" role="alert">${esc(o.error)}</p>` : ''}
<label for="pw">Password</label><input id="pw" name="password" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button>
<p class="small">CLUSTER_DASHBOARD_PASSWORD, or the password derived from CLUSTER_SECRET (<code>npx ddp-cluster dashboard-password</code>).</p>
</form></main>`, o.base);
}

// The live page's script. Plain ES2017, no dependencies; builds DOM nodes, never HTML strings.
const SCRIPT = `
(function(){
'use strict';
var base=document.body.getAttribute('data-base');
var $=function(id){return document.getElementById(id)};
var COLORS=['#0072b2','#e69f00','#009e73','#cc79a7','#56b4e9','#d55e00','#6a3d9a','#000000'];
var colorOf={},nColors=0,samples=[],since=0,evSeq=0,events=[],paused=false,timer=null,WINDOW=600;
function color(id){if(!(id in colorOf))colorOf[id]=COLORS[nColors++%COLORS.length];return colorOf[id]}
function el(tag,attrs,kids){var e=document.createElement(tag);if(attrs)for(var k in attrs){if(k==='text')e.textContent=attrs[k];else e.setAttribute(k,attrs[k])}
 (kids||[]).forEach(function(c){if(c!=null)e.appendChild(typeof c==='string'?document.createTextNode(c):c)});return e}
function svg(tag,attrs){var e=document.createElementNS('http://www.w3.org/2000/svg',tag);for(var k in attrs)e.setAttribute(k,attrs[k]);return e}
function dur(ms){var s=Math.max(0,Math.round(ms/1000));if(s<60)return s+' s';var m=Math.floor(s/60);if(m<60)return m+' min';var h=Math.floor(m/60);if(h<48)return h+' h '+(m%60)+' min';return Math.floor(h/24)+' d'}
function mb(b){return (b/1048576).toFixed(0)+' MB'}
function pct(x){return (x*100).toFixed(0)+'%'}
function hms(t){var d=new Date(t);return d.toLocaleTimeString([], {hour12:false})}
function tag(text,cls){return el('span',{'class':'tag '+cls,text:text})}
function card(value,label){return el('li',null,[el('b',{text:String(value)}),el('span',{text:label})])}
function render(d){
 var t=d.totals;
 $('self').textContent='instance '+d.instanceId+(d.self?'':' (not registered)');
 var disc=$('disc');disc.textContent=d.discovery.ok?'discovery ok':(d.discovery.stale?'discovery unreachable (view stale)':'discovery unreachable');
 disc.className='tag '+(d.discovery.ok?'ok':'bad');
 var cards=$('cards');cards.textContent='';
 cards.appendChild(card(t.healthy+' / '+t.members,'instances healthy'));
 cards.appendChild(card(t.sessions,'sessions'));
 cards.appendChild(card(t.capacity?pct(t.sessions/t.capacity):'-','of capacity ('+t.capacity+')'));
 cards.appendChild(card(t.serving+' / '+t.draining+' / '+t.starting,'serving / draining / starting'));
 cards.appendChild(card(t.moved||0,'sessions moved by rebalancing'));
 cards.appendChild(card(hms(d.now),'updated'));
 var tb=$('rows');tb.textContent='';
 d.members.forEach(function(m){
  var c=m.check,health=[m.healthy?tag('up','ok'):tag('DOWN','bad')];
  if(c)health.push(el('div',{'class':'small',text:(c.up?'check ok':'check failed: '+c.reason)+(c.rttMs!=null?' \\u00b7 '+c.rttMs+' ms':'')}));
  var load=m.capacity?m.sessions/m.capacity:0,bar=el('span',{'class':'bar','aria-hidden':'true'},[el('i')]);
  bar.firstChild.style.width=Math.min(100,load*100).toFixed(1)+'%';
  var sw=el('span',{'class':'sw','aria-hidden':'true'});sw.style.background=color(m.id);
  var name=el('th',{scope:'row'},[sw,m.id+(m.self?' ':''),m.self?tag('this','info'):null,el('div',{'class':'small',text:m.host+' \\u00b7 '+m.endpoint+(m.balancer?' \\u00b7 balancer '+m.balancer:'')})]);
  var tr=el('tr',m.healthy?null:{'class':'down'},[name,el('td',{text:m.service}),
   el('td',null,[tag(m.state,m.state==='serving'?'ok':m.state==='draining'?'warn':'info')]),el('td',null,health),
   el('td',{'class':'n'},[String(m.sessions)]),el('td',{'class':'n',text:m.moved==null?'-':String(m.moved)}),el('td',{'class':'n'},[String(m.capacity),bar]),
   el('td',{'class':'n',text:pct(m.elu)}),el('td',{'class':'n',text:m.delayMs.toFixed(1)+' ms'}),
   el('td',{'class':'n',text:pct(m.cpu)}),el('td',{'class':'n',text:mb(m.rss)}),
   el('td',{'class':'n',text:dur(m.uptimeMs)}),el('td',{text:(m.appVersion||'-')+' / '+m.pkgVersion}),
   el('td',{'class':'n',text:(m.heartbeatAgeMs/1000).toFixed(1)+' s'})]);
  tb.appendChild(tr);
 });
 if(!d.members.length)tb.appendChild(el('tr',null,[el('td',{colspan:'14',text:'No members yet.'})]));
 d.history.forEach(function(s){samples.push(s)});
 if(d.history.length)since=d.history[d.history.length-1].t;
 if(samples.length>WINDOW)samples.splice(0,samples.length-WINDOW);
 chart(d);
 d.events.forEach(function(e){events.push(e);evSeq=Math.max(evSeq,e.seq)});
 if(events.length>100)events.splice(0,events.length-100);
 var ol=$('events');ol.textContent='';
 events.slice().reverse().forEach(function(e){
  var cls=e.kind==='down'||e.kind==='failover'||e.kind==='outage'||e.kind==='leave'?'bad':e.kind==='drain'||e.kind==='rebalance'?'warn':e.kind==='up'||e.kind==='join'||e.kind==='recovered'||e.kind==='serving'?'ok':'info';
  ol.appendChild(el('li',null,[el('time',{datetime:new Date(e.t).toISOString(),text:hms(e.t)}),tag(e.kind,cls),' ',e.member?el('b',{text:e.member}):null,e.member?' ':null,e.detail]));
 });
 if(!events.length)ol.appendChild(el('li',{text:'No events yet.'}));
}
function chart(d){
 var box=$('chart');box.textContent='';
 var W=720,H=240,L=40,R=14,T=10,B=24,now=d.now,max=4;
 var ids={};samples.forEach(function(s){for(var id in s.s){ids[id]=1;if(s.s[id]>max)max=s.s[id]}});
 d.members.forEach(function(m){ids[m.id]=1});
 // The time axis grows with the history kept: 1 to 10 minutes.
 var mins=samples.length?Math.min(WINDOW/60,Math.max(1,Math.ceil((now-samples[0].t)/60000))):1,span=mins*60000;
 var raw=max/4,mag=Math.pow(10,Math.floor(Math.log10(raw))),step=[1,2,5,10].map(function(k){return k*mag}).filter(function(v){return v>=raw})[0];
 step=Math.max(1,step);var top=Math.ceil(max/step)*step;
 var x=function(t){return L+(W-L-R)*(1-(now-t)/span)},y=function(v){return T+(H-T-B)*(1-v/top)};
 var g=svg('g',{'font-size':'11','fill':'#57606a'});
 for(var v=0;v<=top;v+=step){var yy=y(v);g.appendChild(svg('line',{x1:L,x2:W-R,y1:yy,y2:yy,stroke:'#eaeef2'}));
  var tx=svg('text',{x:L-6,y:yy+4,'text-anchor':'end'});tx.textContent=String(v);g.appendChild(tx)}
 var every=mins<=2?0.5:mins<=5?1:2;
 for(var m=mins;m>=0;m-=every){var lx=svg('text',{x:x(now-m*60000),y:H-6,'text-anchor':m===mins?'start':m===0?'end':'middle'});
  lx.textContent=m?'-'+(m<1||m%1?Math.round(m*60)+' s':m+' min'):'now';g.appendChild(lx)}
 box.appendChild(g);
 var legend=$('legend');legend.textContent='';var desc=[];
 Object.keys(ids).sort().forEach(function(id){
  // One polyline per unbroken run: a member that was down or absent leaves a gap.
  var runs=[],pts=[],prev=null;
  samples.forEach(function(s){if(now-s.t>span)return;
   if(id in s.s){if(prev!==null&&s.t-prev>2500&&pts.length){runs.push(pts);pts=[]}pts.push(x(s.t).toFixed(1)+','+y(s.s[id]).toFixed(1));prev=s.t}
   else if(pts.length){runs.push(pts);pts=[]}});
  if(pts.length)runs.push(pts);
  runs.forEach(function(r){box.appendChild(svg('polyline',{points:r.join(' '),fill:'none',stroke:color(id),'stroke-width':'2','stroke-linejoin':'round'}))});
  var cur=d.members.filter(function(m){return m.id===id})[0];
  var now1=!cur?'gone':!cur.healthy?'down':String(cur.sessions);
  var sw=el('i');sw.style.background=color(id);legend.appendChild(el('li',null,[sw,id+' ('+now1+')']));
  desc.push(id+' '+now1);
 });
 $('chartdesc').textContent='Sessions per instance over the last '+(mins===1?'minute':mins+' minutes')+' (healthy instances only); now: '+desc.join(', ');
}
function banner(text){var b=$('banner');b.textContent=text||'';b.className=text?'on':''}
function tick(){
 timer=null;if(paused)return;
 fetch(base+'/api/cluster?since='+since+'&events='+evSeq,{headers:{'x-ddp-cluster-dashboard':'1'},credentials:'same-origin',cache:'no-store'})
 .then(function(r){
  if(r.status===401){banner('Your session has expired: reload the page to log in again.');return null}
  if(!r.ok)throw new Error('HTTP '+r.status);return r.json()})
 .then(function(d){if(d){banner('');render(d);schedule()}})
 .catch(function(e){banner('Cannot reach this instance ('+e.message+'); retrying\\u2026');schedule()});
}
function schedule(){if(!paused&&timer===null)timer=setTimeout(tick,1000)}
$('pause').addEventListener('click',function(){paused=!paused;this.setAttribute('aria-pressed',String(paused));this.textContent=paused?'Resume updates':'Pause updates';if(!paused)tick()});
tick();
})();
`;

export function dashboardPage(o: { base: string; nonce: string; instanceId: string }): string {
  return shell('ddp-cluster', o.nonce, `<header><h1>ddp-cluster</h1><span class="sub" id="self">instance ${esc(o.instanceId)}</span>
<span class="tag info" id="disc">loading…</span><span class="sp"></span>
<button type="button" id="pause" aria-pressed="false">Pause updates</button>
<form method="post" action="${esc(o.base)}/logout"><button type="submit">Log out</button></form></header>
<main><div id="banner" role="status" aria-live="polite"></div>
<section aria-labelledby="h-sum"><h2 id="h-sum">Cluster</h2><ul class="cards" id="cards"></ul></section>
<section aria-labelledby="h-inst"><h2 id="h-inst">Instances</h2>
<div class="scroll" tabindex="0" role="region" aria-labelledby="h-inst"><table>
<caption>Every member of the cluster as this instance sees it; updated every second.</caption>
<thead><tr><th scope="col">Instance</th><th scope="col">Service</th><th scope="col">State</th><th scope="col">Health</th>
<th scope="col" class="n">Sessions</th><th scope="col" class="n">Moved</th><th scope="col" class="n">Capacity</th><th scope="col" class="n">Event loop</th>
<th scope="col" class="n">Loop delay</th><th scope="col" class="n">CPU</th><th scope="col" class="n">RSS</th>
<th scope="col" class="n">Uptime</th><th scope="col">Version (app / pkg)</th><th scope="col" class="n">Heartbeat</th></tr></thead>
<tbody id="rows"></tbody></table></div></section>
<div class="grid"><section aria-labelledby="h-chart"><h2 id="h-chart">Sessions per instance</h2><div class="panel">
<svg id="chart" viewBox="0 0 720 240" role="img" aria-labelledby="chartdesc"></svg>
<p id="chartdesc" class="small"></p><ul class="legend" id="legend"></ul></div></section>
<section aria-labelledby="h-ev"><h2 id="h-ev">Recent events</h2><div class="panel"><ol class="ev" id="events"></ol></div></section></div>
</main><script nonce="${o.nonce}">${SCRIPT}</script>`, o.base);
}
