// legion dashboard: plain JS, no dependencies. Every dynamic string goes through textContent/createElement.
'use strict';
(() => {
  const KEY = 'legion.dashboard.auth';
  const $ = (id) => document.getElementById(id);
  const SVGNS = 'http://www.w3.org/2000/svg';
  const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#ca8a04', '#db2777'];

  let auth = null;      // {mode:'operator', token} | {mode:'customer', username, password}
  let session = 0;      // bumped on logout: stale streams and timers stop
  let streamCtl = null;
  let graph = null;     // {kind:'container', uid} | {kind:'domain', id, name}
  let graphTimer = null, graphGen = 0;
  let lastCustomer = null;

  // ---------- DOM helpers ----------
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    setAttrs(e, attrs);
    for (const k of kids.flat()) if (k != null && k !== false) e.append(k instanceof Node ? k : String(k));
    return e;
  }
  function sv(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    setAttrs(e, attrs);
    if (text != null) e.textContent = String(text);
    return e;
  }
  function setAttrs(e, attrs) {
    if (!attrs) return;
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'text') e.textContent = String(v);
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k === 'cls' ? 'class' : k, v === true ? '' : String(v));
    }
  }
  const dash = '—';
  const show = (v) => (v == null || v === '' ? dash : String(v));
  const pad = (n) => String(n).padStart(2, '0');
  function hms(ms) {
    const d = new Date(ms);
    return isNaN(d) ? dash : `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  }
  function when(ms) {
    const d = new Date(ms);
    if (isNaN(d)) return dash;
    const today = new Date().toDateString() === d.toDateString();
    return (today ? '' : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} `) + hms(ms);
  }
  function bytes(n) {
    if (n == null || !isFinite(n)) return dash;
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0, v = Math.abs(n);
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return (n < 0 ? '-' : '') + (i ? v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0) : Math.round(v)) + ' ' + u[i];
  }
  function num(v, d) {
    if (!isFinite(v)) return dash;
    const a = Math.abs(v);
    return v.toFixed(d != null ? d : a >= 100 ? 0 : a >= 10 ? 1 : 2);
  }

  // ---------- auth ----------
  function b64(s) {
    let bin = '';
    for (const b of new TextEncoder().encode(s)) bin += String.fromCharCode(b);
    return btoa(bin);
  }
  function headers() {
    if (!auth) return {};
    return auth.mode === 'operator'
      ? { Authorization: 'Bearer ' + auth.token }
      : { Authorization: 'Basic ' + b64(auth.username + ':' + auth.password) };
  }
  async function errorBody(res) {
    let text = '';
    try { text = await res.text(); } catch (_) { /* ignore */ }
    try {
      const j = JSON.parse(text);
      if (j && typeof j === 'object' && !Array.isArray(j)) return j;
    } catch (_) { /* not JSON */ }
    return { error: `HTTP ${res.status} ${res.statusText || ''}`.trim(), ...(text ? { body: text.slice(0, 300) } : {}) };
  }
  function showLoginError(body) {
    const box = $('login-error');
    box.replaceChildren();
    box.hidden = !body;
    if (!body) return;
    const main = body.error != null ? body.error : 'login failed';
    box.append(el('div', { cls: 'err-main', text: typeof main === 'string' ? main : JSON.stringify(main) }));
    for (const [k, v] of Object.entries(body)) {
      if (k === 'error') continue;
      box.append(el('div', { cls: 'err-extra' }, el('span', { cls: 'k', text: k + ': ' }), typeof v === 'string' ? v : JSON.stringify(v)));
    }
  }
  async function login(creds) {
    auth = creds;
    showLoginError(null);
    setBusy(true);
    let res;
    try {
      res = await fetch('/api/dashboard/whoami', { headers: headers(), cache: 'no-store' });
    } catch (e) {
      auth = null; setBusy(false);
      showLoginError({ error: 'cannot reach the server', detail: String((e && e.message) || e) });
      return;
    }
    if (!res.ok) {
      const body = await errorBody(res);
      auth = null; setBusy(false);
      sessionStorage.removeItem(KEY);
      showLoginError(body);
      return;
    }
    let who = {};
    try { who = await res.json(); } catch (_) { /* empty */ }
    setBusy(false);
    sessionStorage.setItem(KEY, JSON.stringify(creds));
    start(who || {});
  }
  function setBusy(b) {
    for (const id of ['op-login', 'cu-login']) $(id).disabled = b;
  }
  function logout(err) {
    session++;
    if (streamCtl) streamCtl.abort();
    streamCtl = null;
    closeGraphs();
    auth = null; lastCustomer = null;
    sessionStorage.clear();
    $('app').replaceChildren();
    $('session').hidden = true;
    $('updated').textContent = '';
    $('snapshot-error').hidden = true;
    setLive(false);
    $('login').hidden = false;
    $('op-token').value = ''; $('cu-password').value = '';
    showLoginError(err || null);
  }
  function setTab(mode) {
    const op = mode === 'operator';
    $('tab-operator').classList.toggle('active', op);
    $('tab-customer').classList.toggle('active', !op);
    $('tab-operator').setAttribute('aria-selected', String(op));
    $('tab-customer').setAttribute('aria-selected', String(!op));
    $('op-form').hidden = !op;
    $('cu-form').hidden = op;
    showLoginError(null);
    (op ? $('op-token') : $('cu-username')).focus();
  }

  // ---------- session / live stream ----------
  function start(who) {
    const my = ++session;
    $('login').hidden = true;
    $('session').hidden = false;
    const role = who.role === 'operator' || (who.role == null && auth.mode === 'operator') ? 'operator' : 'customer';
    $('whoami').textContent = role === 'operator' ? `operator ${who.name || ''}`.trim() : `customer ${who.username || auth.username || ''}`.trim();
    const app = $('app');
    if (role === 'operator') {
      app.replaceChildren(el('div', { id: 'operator-view' }, el('p', { cls: 'muted', text: 'waiting for the first snapshot…' })));
      stream('/admin/dashboard/events', renderOperator, my);
    } else {
      app.replaceChildren(el('div', { id: 'customer-view' },
        el('div', { id: 'customer-data' }, el('p', { cls: 'muted', text: 'waiting for the first snapshot…' })),
        graphsPanel()));
      stream('/api/dashboard/customer/events', renderCustomer, my);
    }
  }
  function setLive(on, why) {
    const s = $('live-status');
    s.textContent = on ? 'live' : 'reconnecting…';
    s.className = on ? 'on' : 'off';
    s.title = why || '';
  }
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function stream(url, render, my) {
    while (my === session) {
      const ctl = new AbortController();
      streamCtl = ctl;
      let why = 'stream closed';
      let watchdog = null;
      const pet = () => { clearTimeout(watchdog); watchdog = setTimeout(() => ctl.abort(), 45000); };
      try {
        pet();
        const res = await fetch(url, { headers: headers(), cache: 'no-store', signal: ctl.signal });
        if (res.status === 401) {
          const body = await errorBody(res);
          clearTimeout(watchdog);
          if (my === session) logout(body);
          return;
        }
        if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
        setLive(true);
        const reader = res.body.getReader();
        const dec = new TextDecoder();
        let buf = '', ev = '', data = [];
        for (;;) {
          const { value, done } = await reader.read();
          if (done || my !== session) break;
          pet();
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf('\n')) >= 0) {
            let line = buf.slice(0, i);
            buf = buf.slice(i + 1);
            if (line.endsWith('\r')) line = line.slice(0, -1);
            if (line === '') {
              if (data.length && (ev === '' || ev === 'snapshot')) dispatch(data.join('\n'), render, my);
              ev = ''; data = [];
              continue;
            }
            if (line[0] === ':') continue;
            const c = line.indexOf(':');
            const field = c < 0 ? line : line.slice(0, c);
            let v = c < 0 ? '' : line.slice(c + 1);
            if (v[0] === ' ') v = v.slice(1);
            if (field === 'event') ev = v;
            else if (field === 'data') data.push(v);
          }
        }
        try { reader.cancel(); } catch (_) { /* ignore */ }
      } catch (e) {
        why = String((e && e.message) || e);
      }
      clearTimeout(watchdog);
      if (my !== session) return;
      setLive(false, why);
      await sleep(1000);
    }
  }
  function dispatch(text, render, my) {
    if (my !== session) return;
    let snap;
    try { snap = JSON.parse(text); } catch (_) { return; }
    if (!snap || typeof snap !== 'object') return;
    // A snapshot the server could not build ({"error": "..."}, e.g. the store has no quorum): keep the last data.
    const notice = $('snapshot-error');
    if (snap.error != null && !Array.isArray(snap.nodes) && !Array.isArray(snap.containers)) {
      notice.textContent = 'latest snapshot failed: ' + String(snap.error) + ' — showing the previous data';
      notice.hidden = false;
      return;
    }
    notice.hidden = true;
    $('updated').textContent = 'updated ' + (snap.generated_ms != null ? hms(snap.generated_ms) : hms(Date.now()));
    try { render(snap); } catch (e) { console.error('render failed', e); }
  }

  // ---------- shared pieces ----------
  function section(title, _id, body, extra) {
    return el('section', { cls: 'panel' + (extra ? ' ' + extra : '') }, el('h2', { text: title }), body);
  }
  // heads: column titles; a title starting with '#' is a numeric (right-aligned) column.
  function table(id, heads, rows, emptyText) {
    const t = el('table', { id, cls: 'grid' },
      el('thead', null, el('tr', null, heads.map((h) => el('th', h[0] === '#' ? { cls: 'num', text: h.slice(1) } : { text: h })))),
      el('tbody', null, rows));
    if (!rows.length) t.tBodies[0].append(el('tr', { cls: 'empty-row' }, el('td', { colspan: heads.length, text: emptyText || 'none' })));
    return t;
  }
  // Re-rendering every second must not throw away the scroll position of the scrolling lists.
  function keepScroll(fn) {
    const ids = ['failover-history', 'alarms-list'];
    const pos = ids.map((id) => ($(id) ? $(id).scrollTop : 0));
    fn();
    ids.forEach((id, i) => { if ($(id) && pos[i]) $(id).scrollTop = pos[i]; });
  }
  const td = (content, cls) => el('td', cls ? { cls } : null, content == null ? dash : content);
  function alarmsList(alarms) {
    const list = el('ul', { id: 'alarms-list', cls: 'list' });
    const sorted = (Array.isArray(alarms) ? alarms : []).slice().sort((a, b) => (b.unix_ms || 0) - (a.unix_ms || 0));
    for (const a of sorted) {
      const sw = el('span', { cls: 'swatch', title: show(a.color) });
      if (a.color) sw.style.backgroundColor = String(a.color);
      list.append(el('li', { 'data-alarm-id': a.id },
        sw,
        el('span', { cls: 'time', text: when(a.unix_ms) }),
        el('span', { cls: 'tag', text: 'container ' + show(a.container) }),
        el('span', { cls: 'tag lvl', text: 'level ' + show(a.level) }),
        el('span', { cls: 'msg', text: show(a.msg) })));
    }
    return [list, sorted.length ? null : el('p', { cls: 'muted none-note', text: 'no alarms' })];
  }

  // ---------- operator ----------
  function renderOperator(s) {
    const root = $('operator-view');
    if (!root) return;
    const nodes = Array.isArray(s.nodes) ? s.nodes : [];
    const up = nodes.filter((n) => n.reachable).length;
    const kv = (label, ...v) => el('span', { cls: 'kv' }, el('span', { cls: 'k', text: label }), ...v);
    const summary = el('div', { cls: 'summary' },
      kv('legion', el('b', { id: 'legion-name', text: show(s.legion) })),
      kv('Lord', el('b', { id: 'lord-name', cls: s.lord ? 'lord' : 'none', text: s.lord || 'none' })),
      kv('VIP', el('span', { id: 'vip', text: s.vip || 'none' }), el('span', { cls: 'k', text: ' held by ' }),
        el('b', { id: 'vip-holder', text: s.vip_holder || 'none' })),
      kv('store leader', el('b', { id: 'store-leader', text: s.store_leader || 'none' })),
      kv('nodes', el('b', { cls: up < nodes.length ? 'warn' : '', text: `${up}/${nodes.length} reachable` })));

    const rows = nodes.map((n) => {
      const state = !n.reachable ? 'unreachable' : n.lord ? 'Lord' : 'member';
      const st = n.store;
      const h = n.hosting;
      const members = Array.isArray(n.members) ? n.members : [];
      const notes = !n.reachable ? el('span', { cls: 'error', text: show(n.error) })
        : h ? `hosting v${show(h.applied_version)}, ${show(h.sub_emperors)} sub-emperors` : '';
      return el('tr', { 'data-node': n.name, cls: 'state-' + state.toLowerCase() },
        td(el('b', { text: show(n.name) })),
        td(el('span', { cls: 'badge ' + state.toLowerCase(), text: state })),
        td(n.reachable ? show(n.valor) : dash, 'num'),
        td(n.reachable && n.lease_ms != null ? (n.lease_ms / 1000).toFixed(1) + ' s' : dash, 'num'),
        td(n.reachable ? show(n.vip_phase) : dash),
        td(n.reachable ? el('span', { title: members.join(', '), text: String(members.length) }) : dash, 'num'),
        td(n.reachable ? `${show(n.votes)} / ${show(n.quorum)}` : dash, 'num'),
        td(st ? el('span', null, show(st.role), st.is_leader ? el('span', { cls: 'badge leader', text: 'leader' }) : '',
          st.reachable === false ? el('span', { cls: 'badge unreachable', text: 'down' }) : '') : dash),
        td(st ? show(st.applied_seq) : dash, 'num'),
        td(h ? show(h.containers) : dash, 'num'),
        td(notes, 'notes'));
    });
    const nodesTable = table('nodes-table',
      ['node', 'state', '#valor', '#lease', 'VIP phase', '#members', '#votes / quorum', 'store', '#applied seq', '#containers', 'notes'], rows, 'no nodes');

    const hist = el('ol', { id: 'failover-history', cls: 'list' });
    const fo = (Array.isArray(s.failovers) ? s.failovers : []).slice().sort((a, b) => (b.at_ms || 0) - (a.at_ms || 0));
    for (const f of fo.slice(0, 200)) {
      hist.append(el('li', { cls: 'ev-' + String(f.event || '').replace(/[^a-z_]/gi, '') },
        el('span', { cls: 'time', text: when(f.at_ms) }),
        el('span', { cls: 'badge event', text: show(f.event) }),
        el('b', { cls: 'node', text: show(f.node) }),
        f.detail ? el('span', { cls: 'msg', text: String(f.detail) }) : ''));
    }

    const doms = Array.isArray(s.domains) ? s.domains : [];
    const domRows = doms.map((d) => el('tr', { 'data-domain': d.domain },
      td(show(d.domain)),
      td(el('span', null, (Array.isArray(d.backends) ? d.backends : []).map((b) => el('span', { cls: 'chip', text: String(b) }))))));

    keepScroll(() => root.replaceChildren(summary,
      section('Nodes', null, nodesTable),
      el('div', { cls: 'cols' },
        section('Failover history', null, [hist, fo.length ? null : el('p', { cls: 'muted none-note', text: 'no failover events' })], 'scroll'),
        el('div', null,
          section('Domains → backends', null, table('domains-table', ['domain', 'backends'], domRows, 'no domains')),
          section('Alarms', null, alarmsList(s.alarms), 'scroll')))));
  }

  // ---------- customer ----------
  function renderCustomer(s) {
    const root = $('customer-data');
    if (!root) return;
    lastCustomer = s;
    const cs = Array.isArray(s.containers) ? s.containers : [];
    const rows = cs.map((c) => {
      const used = c.storage_used != null
        ? el('span', { cls: 'muted', text: ` (${bytes(c.storage_used)} used${c.storage ? ', ' + Math.round(c.storage_used / (c.storage * 1048576) * 100) + '%' : ''})` }) : '';
      const open = graph && graph.kind === 'container' && String(graph.uid) === String(c.uid);
      return el('tr', { 'data-uid': c.uid, cls: open ? 'selected' : null },
        td(show(c.uid), 'num'),
        td(el('b', { text: show(c.name) })),
        td(show(c.server)),
        td(el('span', { cls: 'badge ' + String(c.state || 'unknown').replace(/[^a-z]/gi, ''), text: show(c.state) })),
        td(c.memory != null ? c.memory + ' MB' : dash, 'num'),
        td(el('span', null, c.storage != null ? c.storage + ' MB' : dash, used), 'num'),
        td(el('button', { type: 'button', cls: 'show-graphs', 'data-uid': c.uid, text: 'graphs' })));
    });
    const doms = el('ul', { id: 'domains-list', cls: 'list' });
    for (const d of Array.isArray(s.domains) ? s.domains : []) {
      const open = graph && graph.kind === 'domain' && String(graph.id) === String(d.id);
      doms.append(el('li', { 'data-domain-id': d.id, cls: open ? 'selected' : null },
        el('b', { text: show(d.name) }),
        el('button', { type: 'button', cls: 'show-domain-graph', 'data-domain-id': d.id, 'data-domain-name': d.name || '', text: 'hits' })));
    }
    keepScroll(() => root.replaceChildren(
      el('div', { cls: 'summary' }, el('span', { cls: 'kv' }, el('span', { cls: 'k', text: 'customer' }), el('b', { id: 'customer-name', text: show(s.username) })),
        el('span', { cls: 'kv' }, el('span', { cls: 'k', text: 'containers' }), el('b', { text: String(cs.length) }))),
      section('Containers', null, table('containers-table', ['#uid', 'name', 'server', 'state', '#memory', '#storage', ''], rows, 'no containers')),
      el('div', { cls: 'cols' },
        section('Domains', null, [doms, doms.children.length ? null : el('p', { cls: 'muted none-note', text: 'no domains' })]),
        section('Alarms', null, alarmsList(s.alarms), 'scroll'))));
  }

  function graphsPanel() {
    return el('section', { id: 'graphs', cls: 'panel', hidden: true },
      el('div', { cls: 'graphs-head' },
        el('h2', { id: 'graphs-title', text: 'Graphs' }),
        el('span', { id: 'graphs-status', cls: 'muted' }),
        el('button', { type: 'button', id: 'graphs-close', text: 'close' })),
      el('div', { id: 'charts', cls: 'charts' }));
  }
  function openGraphs(g) {
    graph = g;
    const p = $('graphs');
    if (!p) return;
    p.hidden = false;
    $('graphs-title').textContent = g.kind === 'container' ? `Container ${g.uid}${g.name ? ' (' + g.name + ')' : ''}` : `Domain ${g.name || g.id}: hits`;
    $('charts').replaceChildren(el('p', { cls: 'muted', text: 'loading…' }));
    clearInterval(graphTimer);
    graphTimer = setInterval(loadGraphs, 10000);
    loadGraphs();
    if (lastCustomer) renderCustomer(lastCustomer);
    p.scrollIntoView({ block: 'nearest' });
  }
  function closeGraphs() {
    clearInterval(graphTimer);
    graphTimer = null; graph = null; graphGen++;
    const p = $('graphs');
    if (p) { p.hidden = true; $('charts').replaceChildren(); }
    if (lastCustomer && $('customer-data')) renderCustomer(lastCustomer);
  }
  async function getJSON(url) {
    const res = await fetch(url, { headers: headers(), cache: 'no-store' });
    if (!res.ok) {
      const b = await errorBody(res);
      throw new Error([b.error, b.reason, b.hint].filter(Boolean).join(': ') || 'HTTP ' + res.status);
    }
    return res.json();
  }
  const pct = (v) => num(v, 1) + ' %';
  const bps = (v) => bytes(v) + '/s';
  const CHARTS = [
    { metric: 'cpu', title: 'CPU (% of one core)', fmt: pct, series: [{ name: 'cpu', rate: true, scale: 100 / 1e9 }] },
    { metric: 'mem', title: 'Memory', fmt: bytes, series: [{ name: 'mem' }, { name: 'mem.rss' }] },
    { metric: 'net', title: 'Network', fmt: bps, series: [{ name: 'net.rx', rate: true }, { name: 'net.tx', rate: true }] },
    { metric: 'io', title: 'Disk I/O', fmt: bps, series: [{ name: 'io.read', rate: true }, { name: 'io.write', rate: true }] },
  ];
  async function loadGraphs() {
    const g = graph;
    if (!g) return;
    const my = ++graphGen;
    let charts = [];
    try {
      if (g.kind === 'container') {
        const names = CHARTS.flatMap((c) => c.series.map((x) => x.name));
        const got = await Promise.all(names.map((m) =>
          getJSON(`/api/metrics/container.${m}/${encodeURIComponent(g.uid)}`).then((d) => ({ d }), (e) => ({ e: e.message }))));
        const by = Object.fromEntries(names.map((m, i) => [m, got[i]]));
        charts = CHARTS.map((c) => ({
          metric: c.metric, title: c.title, fmt: c.fmt,
          error: c.series.map((x) => by[x.name].e).filter(Boolean)[0],
          series: c.series.map((x) => ({ name: x.name, points: prep(by[x.name].d, x.rate, x.scale || 1) })),
        }));
      } else {
        let data = [], error;
        try { data = await getJSON(`/api/metrics/domain.hits/${encodeURIComponent(g.id)}`); } catch (e) { error = e.message; }
        charts = [{
          metric: 'hits', title: 'Hits per second', fmt: (v) => num(v) + '/s', error, wide: true,
          series: (Array.isArray(data) ? data : []).map((d) => ({ name: `${show(d.container)}@${show(d.node)}`, points: prep(d.metrics, true, 1) })),
        }];
      }
    } catch (e) {
      charts = [];
    }
    if (my !== graphGen || g !== graph) return;
    $('charts').replaceChildren(...charts.map(chart));
    $('graphs-status').textContent = 'refreshed ' + hms(Date.now()) + ' · every 10 s';
  }
  // [[unix_s, v], ...] → [[ms, y]]: gauges as-is, counters as per-second rate (negative deltas = reset, skipped).
  function prep(raw, rate, scale) {
    const pts = (Array.isArray(raw) ? raw : [])
      .filter((p) => Array.isArray(p) && isFinite(p[0]) && isFinite(p[1]) && p[1] !== null)
      .map((p) => [Number(p[0]), Number(p[1])]);
    if (!rate) return pts.map(([t, v]) => [t * 1000, v * scale]);
    const out = [];
    for (let i = 1; i < pts.length; i++) {
      const dt = pts[i][0] - pts[i - 1][0], dv = pts[i][1] - pts[i - 1][1];
      if (dt > 0 && dv >= 0) out.push([pts[i][0] * 1000, (dv / dt) * scale]);
    }
    return out;
  }
  function chart(c) {
    const W = c.wide ? 1080 : 520, H = c.wide ? 190 : 170, L = 70, R = 12, T = 10, B = 24;
    const svg = sv('svg', { cls: 'chart', 'data-metric': c.metric, viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': c.title });
    const all = c.series.flatMap((s) => s.points);
    const box = el('div', { cls: 'chart-box' + (c.wide ? ' wide' : '') }, el('h3', { text: c.title }), svg);
    svg.append(sv('rect', { x: L, y: T, width: W - L - R, height: H - T - B, cls: 'plot' }));
    if (!all.length) {
      svg.append(sv('text', { x: (W + L) / 2, y: H / 2, 'text-anchor': 'middle', cls: c.error ? 'error' : 'empty' }, c.error ? 'error: ' + c.error : 'no samples yet'));
      return box;
    }
    let x0 = Math.min(...all.map((p) => p[0])), x1 = Math.max(...all.map((p) => p[0]));
    let y0 = Math.min(0, ...all.map((p) => p[1])), y1 = Math.max(...all.map((p) => p[1]));
    if (x1 === x0) { x0 -= 30000; x1 += 30000; }
    if (y1 === y0) y1 = y0 + (Math.abs(y0) || 1);
    y1 += (y1 - y0) * 0.05;
    const X = (t) => L + ((t - x0) / (x1 - x0)) * (W - L - R);
    const Y = (v) => T + (1 - (v - y0) / (y1 - y0)) * (H - T - B);
    for (let k = 0; k <= 4; k++) {
      const v = y0 + ((y1 - y0) * k) / 4, y = Y(v);
      svg.append(sv('line', { x1: L, x2: W - R, y1: y, y2: y, cls: 'gridline' }));
      if (k % 2 === 0) svg.append(sv('text', { x: L - 6, y: y + 4, 'text-anchor': 'end', cls: 'axis' + (k === 0 ? ' min' : k === 4 ? ' max' : '') }, c.fmt(v)));
    }
    const tl = (t) => { const d = new Date(t); return `${pad(d.getHours())}:${pad(d.getMinutes())}`; };
    svg.append(sv('text', { x: L, y: H - 6, 'text-anchor': 'start', cls: 'axis' }, tl(x0)));
    svg.append(sv('text', { x: W - R, y: H - 6, 'text-anchor': 'end', cls: 'axis' }, tl(x1)));
    const legend = el('ul', { cls: 'legend' });
    c.series.forEach((s, i) => {
      const color = COLORS[i % COLORS.length];
      const last = s.points.length ? s.points[s.points.length - 1][1] : null;
      const vals = s.points.map((p) => p[1]);
      if (s.points.length) {
        const d = s.points.map((p, j) => `${j ? 'L' : 'M'}${X(p[0]).toFixed(1)} ${Y(p[1]).toFixed(1)}`).join(' ') + (s.points.length === 1 ? ' l0.01 0' : '');
        svg.append(sv('path', { cls: 'series', 'data-series': s.name, d, stroke: color }));
      }
      legend.append(el('li', null, el('span', { cls: 'swatch' }), el('span', { text: s.name }),
        el('span', { cls: 'muted', text: last == null ? ' no data' : ` now ${c.fmt(last)} · min ${c.fmt(Math.min(...vals))} · max ${c.fmt(Math.max(...vals))}` })));
      legend.lastChild.firstChild.style.backgroundColor = color;
    });
    box.append(legend);
    return box;
  }

  // ---------- wiring ----------
  document.addEventListener('click', (e) => {
    const b = e.target.closest('button');
    if (!b) return;
    if (b.classList.contains('show-graphs')) {
      const uid = b.getAttribute('data-uid');
      const c = lastCustomer && (lastCustomer.containers || []).find((x) => String(x.uid) === uid);
      openGraphs({ kind: 'container', uid, name: c && c.name });
    } else if (b.classList.contains('show-domain-graph')) {
      openGraphs({ kind: 'domain', id: b.getAttribute('data-domain-id'), name: b.getAttribute('data-domain-name') });
    } else if (b.id === 'graphs-close') closeGraphs();
  });
  $('tab-operator').addEventListener('click', () => setTab('operator'));
  $('tab-customer').addEventListener('click', () => setTab('customer'));
  $('logout').addEventListener('click', () => logout());
  $('op-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const token = $('op-token').value.trim();
    if (!token) return showLoginError({ error: 'enter the operator token' });
    login({ mode: 'operator', token });
  });
  $('cu-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const username = $('cu-username').value.trim(), password = $('cu-password').value;
    if (!username || !password) return showLoginError({ error: 'enter username and password' });
    login({ mode: 'customer', username, password });
  });

  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem(KEY) || 'null'); } catch (_) { /* ignore */ }
  if (saved && (saved.mode === 'operator' || saved.mode === 'customer')) {
    if (saved.mode === 'customer') { setTab('customer'); $('cu-username').value = saved.username || ''; }
    login(saved);
  }
})();
