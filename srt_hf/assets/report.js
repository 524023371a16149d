/* srt-hf report: renders the run's data (the JSON in #srt-data) into the page. No network, no libraries.
   Every text from the data goes into the page as a text node or an attribute value, never as HTML. */
(function () {
  'use strict';

  var D, S, C, V, N, META, KINDS = Object.create(null);
  var state = { q: '', status: '', choice: '', selected: '', reason: '', sort: 'row', range: null, page: 0, size: 25 };
  var filtered = [];
  var lowered = null;

  // ---------------------------------------------------------------------------------------------- helpers
  function $(id) { return document.getElementById(id); }

  function el(tag, attrs) {
    var e = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) return;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = String(v);
        else if (k.slice(0, 2) === 'on') e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? '' : String(v));
      });
    }
    for (var i = 2; i < arguments.length; i++) add(e, arguments[i]);
    return e;
  }

  function add(parent, child) {
    if (child === null || child === undefined || child === false) return;
    if (Array.isArray(child)) { child.forEach(function (c) { add(parent, c); }); return; }
    parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }

  function svg(tag, attrs) {
    var e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === 'text') e.textContent = String(attrs[k]); else e.setAttribute(k, String(attrs[k]));
    });
    for (var i = 2; i < arguments.length; i++) if (arguments[i]) e.appendChild(arguments[i]);
    return e;
  }

  function str(col, i) {
    var a = col ? C[col] : null;
    if (!a) return null;
    var k = a[i];
    return k === null || k === undefined ? null : S[k];
  }
  function num(col, i) { var a = col ? C[col] : null; return a ? a[i] : null; }
  // a status's kind as srt_hf.status.kind_of read it (D.kinds, by string-table index): the page parses no status
  function kindOf(status) { return status === null || status === undefined ? '' : (KINDS[status] || ''); }
  function isSelected(i) { return V.selected ? C[V.selected][i] === 1 : true; }
  function reasonGroup(r) { return r === null ? '' : r.split(' (', 1)[0]; }
  function fmt(v, digits) {
    if (v === null || v === undefined) return '–';
    if (typeof v === 'number') {
      if (Number.isInteger(v)) return v.toLocaleString('en-US');
      return v.toFixed(digits === undefined ? 4 : digits);
    }
    if (typeof v === 'boolean') return v ? 'yes' : 'no';
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }
  function pct(part, whole) { return whole ? (100 * part / whole).toFixed(1).replace(/\.0$/, '') + '%' : '–'; }  // as srt_hf.cards.common.percent
  function safeUrl(u) { return typeof u === 'string' && /^https:\/\//.test(u) ? u : null; }
  function label(name) { return String(name).replace(/_/g, ' '); }

  // ---------------------------------------------------------------------------------------------- data
  function loadData() {
    var node = $('srt-data');
    var text = node.textContent;
    if (node.getAttribute('data-encoding') !== 'gzip+base64') return Promise.resolve(JSON.parse(text));
    if (typeof DecompressionStream === 'undefined') {
      return Promise.reject(new Error('this browser cannot unpack the report (it has no DecompressionStream): open it in a ' +
        'current Chrome, Edge, Firefox or Safari'));
    }
    var raw = atob(text.trim());
    var bytes = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    return new Response(stream).text().then(JSON.parse);
  }

  // ---------------------------------------------------------------------------------------------- word diff
  function tokens(text) { return text ? text.match(/\s+|[^\s]+/g) || [] : []; }

  /* Word-level diff of a → b as [[op, text], …], op '=' (both), '-' (only in a), '+' (only in b).
     Whitespace runs are compared like words; the common prefix and suffix are skipped before the LCS table. */
  function diff(a, b) {
    var x = tokens(a), y = tokens(b);
    var pre = 0;
    while (pre < x.length && pre < y.length && x[pre] === y[pre]) pre++;
    var suf = 0;
    while (suf < x.length - pre && suf < y.length - pre && x[x.length - 1 - suf] === y[y.length - 1 - suf]) suf++;
    var xs = x.slice(pre, x.length - suf), ys = y.slice(pre, y.length - suf);
    var ops = [];
    if (pre) ops.push(['=', x.slice(0, pre).join('')]);
    var n = xs.length, m = ys.length;
    if (n * m > 4e6) {  // too long for the table: the changed middle as one replacement
      if (n) ops.push(['-', xs.join('')]);
      if (m) ops.push(['+', ys.join('')]);
    } else if (n || m) {
      var w = m + 1, L = new Uint32Array((n + 1) * w);
      for (var i = n - 1; i >= 0; i--) {
        for (var j = m - 1; j >= 0; j--) {
          L[i * w + j] = xs[i] === ys[j] ? L[(i + 1) * w + j + 1] + 1 : Math.max(L[(i + 1) * w + j], L[i * w + j + 1]);
        }
      }
      var p = 0, q = 0;
      while (p < n || q < m) {
        if (p < n && q < m && xs[p] === ys[q]) { push(ops, '=', xs[p]); p++; q++; }
        else if (q < m && (p === n || L[p * w + q + 1] >= L[(p + 1) * w + q])) { push(ops, '+', ys[q]); q++; }
        else { push(ops, '-', xs[p]); p++; }
      }
    }
    if (suf) push(ops, '=', x.slice(x.length - suf).join(''));
    return regroup(absorbSpaces(ops));
  }

  /* Readable changes: when little is shared the whole text is one replacement; a short common word between two
     changes ("a", "of") counts as changed; within each changed stretch the removed words come before the added. */
  function regroup(ops) {
    var same = 0, all = 0;
    ops.forEach(function (o) { var w = o[1].trim() ? o[1].trim().split(/\s+/).length : 0; all += w; if (o[0] === '=') same += w; });
    if (all && same / all < 0.2) {
      var a = '', b = '';
      ops.forEach(function (o) { if (o[0] !== '+') a += o[1]; if (o[0] !== '-') b += o[1]; });
      return [['-', a], ['+', b]].filter(function (o) { return o[1]; });
    }
    var out = [], dels = '', adds = '';
    function flush() { if (dels) out.push(['-', dels]); if (adds) out.push(['+', adds]); dels = ''; adds = ''; }
    ops.forEach(function (o, k) {
      var between = k > 0 && k < ops.length - 1 && ops[k - 1][0] !== '=' && ops[k + 1][0] !== '=';
      if (o[0] === '=' && !(between && o[1].trim().length <= 3)) { flush(); push(out, '=', o[1]); return; }
      if (o[0] !== '+') dels += o[1];
      if (o[0] !== '-') adds += o[1];
    });
    flush();
    return out;
  }
  function push(ops, op, text) {
    var last = ops[ops.length - 1];
    if (last && last[0] === op) last[1] += text; else ops.push([op, text]);
  }
  /* A change that is only whitespace next to a real change reads better as unchanged. */
  function absorbSpaces(ops) {
    var out = [];
    ops.forEach(function (o) {
      if (o[0] !== '=' && /^\s+$/.test(o[1])) push(out, '=', o[1]); else push(out, o[0], o[1]);
    });
    return out;
  }

  /* The text of one side of a diff: keep '=' and the side's own op, highlighted with <ins> or <del>. */
  function diffNode(ops, side) {
    var mine = [];  // this side's view; a space between two changed words joins them into one mark
    ops.forEach(function (o) { if (o[0] === '=' || o[0] === side) mine.push([o[0], o[1]]); });
    var merged = [];
    mine.forEach(function (o, k) {
      var joins = o[0] === '=' && /^\s+$/.test(o[1]) && k > 0 && k < mine.length - 1 && mine[k - 1][0] === side && mine[k + 1][0] === side;
      push(merged, joins ? side : o[0], o[1]);
    });
    var box = el('div', { class: 'text' });
    merged.forEach(function (o) {
      if (o[0] === '=') box.appendChild(document.createTextNode(o[1]));
      else box.appendChild(el(side === '+' ? 'ins' : 'del', null, o[1]));
    });
    return box;
  }
  function textNode(text) {
    if (text === null || text === undefined || text === '') return el('div', { class: 'text empty' }, '(empty)');
    return el('div', { class: 'text' }, text);
  }

  // ---------------------------------------------------------------------------------------------- overview
  function renderOverview() {
    var kind = META.kind || (V.kind === 'recycle' ? 'recycle' : 'select');
    var bits = [kind + ' run', N.toLocaleString('en-US') + ' rows'];
    if (META.srt_hf_version) bits.push('srt-hf ' + META.srt_hf_version);
    if (META.created) bits.push(META.created);
    $('subtitle').textContent = bits.join(' · ');
    document.title = D.title + ' · srt-hf report';

    if (META.smoke_test) { $('smoke-test').textContent = META.smoke_test; $('smoke-test').hidden = false; }
    var dl = $('provenance');
    function row(name, value) { if (value !== null && value !== undefined && value !== '') add(dl, [el('dt', null, name), el('dd', null, value)]); }
    var src = typeof META.source === 'object' && META.source ? META.source : { name: META.source };
    row('Source', [src.name || 'not recorded', src.split ? ' (split ' + src.split + ')' : '']);
    row('License', src.license || 'unknown (not recorded)');
    var t = obj(META.teacher, 'model');
    if (t.model || kind === 'recycle') row('Teacher', t.model || 'not recorded');
    row('Teacher reply layout', META.layouts_sent);
    var st = obj(META.student, 'model');
    row('Student', st.model || 'not recorded');
    var sc = obj(META.scoring, 'preset');
    if (sc.preset) row('Scoring preset', sc.preset + (sc.template ? ' (template ' + sc.template + ')' : ''));
    var sel = obj(META.selection, 'rule');
    if (sel.rule) {
      var params = Object.keys(sel).filter(function (k) { return k !== 'rule' && sel[k] !== null && typeof sel[k] !== 'object'; })
        .map(function (k) { return label(k) + ' ' + fmt(sel[k]); });
      row('Selection rule', [el('code', null, sel.rule), params.length ? el('span', { class: 'muted' }, ' — ' + params.join(', ')) : null]);
    }
    if (META.teacher_requests) {
      var r = META.teacher_requests;
      row('Teacher requests', [fmt(r.requests_sent || 0), ' sent, ', fmt(r.retried || 0), ' retried, ', fmt(r.failed || 0),
        ' failed, ', fmt(r.cache_hits || 0), ' from cache']);
    }
    var w = META.teacher_written;
    if (w) {
      var rows = w['training rows'];
      row('Written by the teacher', fmt(w['training completions']) + ' of ' + fmt(rows) + ' training completions (' +
        pct(w['training completions'], rows) + '), ' + fmt(w['training prompts']) + ' of ' + fmt(rows) + ' training prompts (' +
        pct(w['training prompts'], rows) + ')');
    }
    var usage = tokenTotals(META.teacher_usage);
    if (usage) row('Teacher tokens', fmt(usage.prompt_tokens) + ' prompt, ' + fmt(usage.completion_tokens) + ' completion (' + fmt(usage.replies) + ' replies)');
    if (META.command && META.command.text) row('Command', el('code', null, META.command.text));
    if (META.derived_from) row('Derived from', META.derived_from);
    var hub = obj(META.hub, 'repo_id'), space = obj(META.space, 'repo_id');
    if (hub.repo_id) row('Dataset on the Hub', link(safeUrl(hub.url) || 'https://huggingface.co/datasets/' + hub.repo_id, hub.repo_id));
    if (space.repo_id) row('Space', link(safeUrl(space.url) || 'https://huggingface.co/spaces/' + space.repo_id, space.repo_id));

    renderFunnel();
    renderKinds();
    renderCharts();
    renderReasons();
    renderSettings();
    renderPrompts();
    var foot = ['Made with srt-hf', META.srt_hf_version ? ' ' + META.srt_hf_version : '', ' from run.json and rows.parquet. ',
      'Everything on this page is in this one file; it works offline.'];
    add($('footer'), foot);
  }

  function tokenTotals(usage) {  // run.json teacher_usage: {stage: {batch|online: {replies, prompt_tokens, completion_tokens}}}
    if (!usage || typeof usage !== 'object') return null;
    var t = { replies: 0, prompt_tokens: 0, completion_tokens: 0 };
    Object.keys(usage).forEach(function (stage) {
      Object.keys(usage[stage] || {}).forEach(function (src) {
        Object.keys(t).forEach(function (k) { t[k] += Number((usage[stage][src] || {})[k]) || 0; });
      });
    });
    return t.replies ? t : null;
  }
  function obj(v, key) {
    if (v && typeof v === 'object') return v;
    var o = {};
    if (v !== null && v !== undefined && v !== '') o[key] = v;
    return o;
  }
  function link(href, text) { return href && /^https:\/\/huggingface\.co\//.test(href) ? el('a', { href: href, rel: 'noopener' }, text) : text; }

  function renderFunnel() {
    var counts = META.counts || { input: N };
    var names = Object.keys(counts);
    var top = counts[names[0]] || N || 1;
    var box = $('funnel');
    names.forEach(function (name, k) {
      var n = Number(counts[name]) || 0;
      var final = /^(selected|sft)$/.test(name);
      add(box, el('div', { class: 'step' },
        el('div', { class: 'label', title: name }, name),
        el('div', { class: 'bar', title: name + ': ' + fmt(n) + ' of ' + fmt(top) + ' (' + pct(n, top) + ')' },
          el('div', { class: 'fill' + (final ? ' final' : ''), style: 'width:' + Math.min(100, 100 * n / top).toFixed(2) + '%' }),
          el('span', { class: 'n' }, fmt(n) + (k ? '  ·  ' + pct(n, top) : '')))));
    });
  }

  function renderKinds() {
    var box = $('kinds');
    (V.stages || []).forEach(function (stage) {
      if (!stage.status) return;
      var tally = {};
      for (var i = 0; i < N; i++) { var k = kindOf(str(stage.status, i)) || '(none)'; tally[k] = (tally[k] || 0) + 1; }
      var kinds = Object.keys(tally).sort();
      if (kinds.length === 1 && kinds[0] === 'ok') return;
      var line = el('div', { class: 'line small' }, el('span', { class: 'muted' }, stage.label + ': '));
      kinds.forEach(function (k) {
        add(line, el('button', {
          type: 'button', class: 'chip ' + (k === 'ok' ? 'good' : 'bad'), title: 'show these rows',
          onclick: function () { setFilter('status', stage.status + '=' + k); }
        }, k + ' ' + tally[k]));
      });
      add(box, line);
    });
  }

  // ---------------------------------------------------------------------------------------------- charts
  function renderCharts() {
    var charts = D.charts || [];
    if (!charts.length) return;
    $('charts-card').hidden = false;
    charts.forEach(function (ch) { add($('charts'), chart(ch)); });
  }

  function finite(v) { return typeof v === 'number' && isFinite(v); }
  function quantile(sorted, p) {
    if (!sorted.length) return null;
    var h = (sorted.length - 1) * p, lo = Math.floor(h);
    return sorted[lo] + (sorted[Math.min(lo + 1, sorted.length - 1)] - sorted[lo]) * (h - lo);
  }

  function chart(ch) {
    // the bins, the clipping and the figures come from srt_hf (figures.py, charts.py): the same as the card's PNG
    var before = [], after = [];
    for (var i = 0; i < N; i++) {
      var b = num(ch.before, i), a = num(ch.after, i);
      if (finite(b)) before.push(b);
      if (finite(a) && isSelected(i)) after.push(a);
    }
    var lo = ch.bins.lo, hi = ch.bins.hi, bins = ch.bins.count, width = (hi - lo) / bins;
    function bin(v) { return Math.max(0, Math.min(bins - 1, Math.floor((v - lo) / width))); }
    var hb = new Array(bins).fill(0), ha = new Array(bins).fill(0);
    before.forEach(function (v) { hb[bin(v)]++; });
    after.forEach(function (v) { ha[bin(v)]++; });
    function outside(which, k) { return (ch.clipped[which] || [0, 0])[k === 0 ? 0 : 1] > 0; }  // counted by srt_hf
    var ymax = Math.max(1, Math.max.apply(null, hb.concat(ha)));

    var W = 620, H = 256, ml = 40, mr = 12, mt = 20 + 12 * Math.max(0, (ch.cutoffs || []).length - 1), mb = 34;
    var pw = W - ml - mr, ph = H - mt - mb;
    function X(v) { return ml + (v - lo) / (hi - lo) * pw; }
    function Y(c) { return mt + ph - c / ymax * ph; }
    var g = svg('svg', { viewBox: '0 0 ' + W + ' ' + H, role: 'img', 'aria-label': ch.label + ': ' + ch.before_label + ' vs ' + ch.after_label });
    var defs = svg('defs');
    var pat = svg('pattern', { id: 'hatch-' + ch.before, width: 6, height: 6, patternUnits: 'userSpaceOnUse', patternTransform: 'rotate(45)' });
    pat.appendChild(svg('line', { x1: 0, y1: 0, x2: 0, y2: 6, stroke: 'white', 'stroke-width': 2.5 }));
    defs.appendChild(pat);
    g.appendChild(defs);
    var step = Math.max(1, Math.ceil(ymax / 4));
    ymax = step * Math.ceil(ymax / step);
    for (var yv = 0; yv <= ymax; yv += step) {
      var yy = Y(yv);
      g.appendChild(svg('line', { x1: ml, x2: W - mr, y1: yy, y2: yy, stroke: '#e5e8ec' }));
      g.appendChild(svg('text', { x: ml - 6, y: yy + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#5b636e', text: yv }));
    }
    var bw = pw / bins;
    function bar(grp, x, count, color, hatched) {
      var attrs = { x: x, y: Y(count), width: bw / 2 - 1, height: ph - (Y(count) - mt) };
      grp.appendChild(svg('rect', Object.assign({ fill: color }, attrs)));
      if (hatched) grp.appendChild(svg('rect', Object.assign({ fill: 'url(#hatch-' + ch.before + ')', class: 'clipped' }, attrs)));
    }
    for (var k = 0; k < bins; k++) {
      var x0 = ml + k * bw, from = lo + k * width, to = from + width;
      var edge = k === 0 || k === bins - 1;
      var grp = svg('g', { class: 'bin' });
      var clippedHere = edge && (outside('before', k) || outside('after', k));
      var range = (k === 0 && clippedHere ? '≤ ' + to.toFixed(3) : k === bins - 1 && clippedHere ? '≥ ' + from.toFixed(3)
        : from.toFixed(3) + ' – ' + to.toFixed(3));
      grp.appendChild(svg('title', { text: ch.label + ' ' + range + ': ' + ch.before_label + ' ' + hb[k] + ', ' + ch.after_label + ' ' + ha[k] }));
      grp.appendChild(svg('rect', { class: 'hit', x: x0, y: mt, width: bw, height: ph, fill: 'transparent' }));
      if (hb[k]) bar(grp, x0 + 1, hb[k], 'rgb(120,144,176)', edge && outside('before', k));
      if (ha[k]) bar(grp, x0 + bw / 2, ha[k], 'rgb(230,126,34)', edge && outside('after', k));
      (function (a, b, edgeLo, edgeHi) {
        grp.addEventListener('click', function () {
          state.range = { col: ch.before, label: ch.label + ' (' + ch.before_label + ')', lo: edgeLo ? -Infinity : a, hi: edgeHi ? Infinity : b };
          state.page = 0; update(true);
        });
      })(from, to, k === 0, k === bins - 1);
      g.appendChild(grp);
    }
    g.appendChild(svg('line', { x1: ml, x2: W - mr, y1: mt + ph, y2: mt + ph, stroke: '#8a929c' }));
    for (var s = 0; s <= 5; s++) {
      var xv = lo + (hi - lo) * s / 5;
      g.appendChild(svg('text', { x: X(xv), y: H - mb + 16, 'text-anchor': 'middle', 'font-size': 11, fill: '#5b636e', text: xv.toFixed(2) }));
    }
    g.appendChild(svg('text', { x: ml + pw / 2, y: H - 4, 'text-anchor': 'middle', 'font-size': 12, fill: '#1f2328', text: ch.label }));
    (ch.cutoffs || []).forEach(function (c, j) {  // the selection rule's cutoffs on this score; a rule without one draws none
      if (!(c.value >= lo && c.value <= hi)) return;
      var xc = X(c.value);
      g.appendChild(svg('line', { class: 'cutoff', x1: xc, x2: xc, y1: mt, y2: mt + ph, stroke: 'rgb(200,40,40)', 'stroke-dasharray': '5 4', 'stroke-width': 1.5 }));
      var tx = xc + 4 > W - mr - 160 ? xc - 4 : xc + 4;
      g.appendChild(svg('text', { x: tx, y: mt - 3 - 12 * j, 'text-anchor': tx < xc ? 'end' : 'start', 'font-size': 11, fill: 'rgb(200,40,40)',
        text: c.label }));
    });
    var head = el('tr', null, el('th', null, ch.label));
    ['n', 'mean', 'median', 'min', 'max', 'share < 1'].forEach(function (h) { add(head, el('th', { class: 'num' }, h)); });
    var table = el('table', null, head);
    (ch.figures || []).forEach(function (f, j) {
      var color = j === 0 ? 'rgb(120,144,176)' : j === ch.figures.length - 1 ? 'rgb(230,126,34)' : null;
      var tr = el('tr', null, el('td', null, [color ? swatch(color) : null, f.label + ' ', el('code', { class: 'muted' }, f.source)]));
      ['n', 'mean', 'median', 'min', 'max', 'share_below_1'].forEach(function (key) { add(tr, el('td', { class: 'num' }, f[key])); });
      add(table, tr);
    });
    var notes = [];
    if (!(ch.cutoffs || []).length) notes.push('The selection rule has no cutoff on ' + ch.label + ', so no line is drawn.');
    (ch.notes || []).forEach(function (n) { notes.push('Clipped: ' + n + '.'); });
    return el('div', { class: 'chart', 'data-score': ch.label }, el('h3', { class: 'small', style: 'margin:0 0 4px' }, ch.label),
      g, table, notes.length ? el('p', { class: 'muted small' }, notes.join(' ')) : null);
  }
  function swatch(color) { return el('span', { class: 'swatch', style: 'background:' + color }); }

  // ---------------------------------------------------------------------------------------------- reasons, settings, prompts
  function renderReasons() {
    if (!V.reason) return;
    var tally = {};
    for (var i = 0; i < N; i++) { var g = reasonGroup(str(V.reason, i)); tally[g] = (tally[g] || 0) + 1; }
    var names = Object.keys(tally).sort(function (a, b) { return tally[b] - tally[a] || (a < b ? -1 : 1); });
    var t = el('table', null, el('tr', null, el('th', null, 'reason'), el('th', { class: 'num' }, 'rows'), el('th', { class: 'num' }, 'share')));
    names.forEach(function (name) {
      add(t, el('tr', null,
        el('td', null, el('button', { type: 'button', class: 'linkish', title: 'show these rows', onclick: function () { setFilter('reason', name); } }, name)),
        el('td', { class: 'num' }, fmt(tally[name])), el('td', { class: 'num' }, pct(tally[name], N))));
    });
    add($('reasons'), t);
    $('reasons-card').hidden = false;
  }

  function renderSettings() {
    var rows = META.settings || [];
    if (!rows.length) return;
    var t = el('table', null, el('tr', null, el('th', null, 'part'), el('th', null, 'setting'), el('th', null, 'value')));
    rows.forEach(function (r) { add(t, el('tr', null, el('td', null, r[0]), el('td', null, el('code', null, r[1])), el('td', null, fmt(r[2])))); });
    add($('settings'), t);
    $('settings-card').hidden = false;
  }

  function renderPrompts() {
    var prompts = META.prompts || {};
    var names = Object.keys(prompts);
    if (!names.length) return;
    names.forEach(function (name) { add($('prompts'), [el('h3', { class: 'small' }, name), el('pre', null, String(prompts[name]))]); });
    $('prompts-card').hidden = false;
  }

  // ---------------------------------------------------------------------------------------------- filters
  function textColumns() {
    var cols = [];
    (V.panels || []).forEach(function (p) {
      if (p.text) cols.push(p.text);
      if (p.original) cols.push(p.original);
      if (p.final) cols.push(p.final);
      (p.teacher || []).forEach(function (t) { cols.push(t.text); });
    });
    (V.stages || []).forEach(function (s) { if (s.status) cols.push(s.status); if (s.reason) cols.push(s.reason); });
    if (V.reason) cols.push(V.reason);
    if (V.id) cols.push(V.id);
    return cols.filter(function (c, k) { return C[c] && cols.indexOf(c) === k; });
  }

  function buildFilters() {
    var fs = $('f-status');
    add(fs, el('option', { value: '' }, 'any status'));
    add(fs, el('option', { value: '*=!ok' }, 'any stage not ok'));
    (V.stages || []).forEach(function (stage) {
      if (!stage.status) return;
      var tally = {};
      for (var i = 0; i < N; i++) { var k = kindOf(str(stage.status, i)); tally[k] = (tally[k] || 0) + 1; }
      var grp = el('optgroup', { label: stage.label });
      Object.keys(tally).sort().forEach(function (k) { add(grp, el('option', { value: stage.status + '=' + k }, stage.label + ': ' + (k || '(none)') + ' (' + tally[k] + ')')); });
      add(fs, grp);
    });

    fs.hidden = !(V.stages || []).some(function (stage) { return stage.status; });

    var fc = $('f-choice');
    add(fc, el('option', { value: '' }, 'any choice'));
    var anyChoice = false;
    (V.stages || []).forEach(function (stage) {
      if (!stage.choice) return;
      anyChoice = true;
      var tally = {};
      for (var i = 0; i < N; i++) { var c = str(stage.choice, i) || ''; tally[c] = (tally[c] || 0) + 1; }
      var grp = el('optgroup', { label: stage.label });
      Object.keys(tally).sort().forEach(function (c) { add(grp, el('option', { value: stage.choice + '=' + c }, stage.label + ': ' + c + ' (' + tally[c] + ')')); });
      add(fc, grp);
    });
    fc.hidden = !anyChoice;

    var fsel = $('f-selected');
    var kept = 0;
    for (var i = 0; i < N; i++) if (isSelected(i)) kept++;
    add(fsel, [el('option', { value: '' }, 'kept and dropped'), el('option', { value: '1' }, 'kept (' + kept + ')'),
      el('option', { value: '0' }, 'dropped (' + (N - kept) + ')')]);
    fsel.hidden = !V.selected;

    var fr = $('f-reason');
    add(fr, el('option', { value: '' }, 'any reason'));
    if (V.reason) {
      var tally = {};
      for (var j = 0; j < N; j++) { var g = reasonGroup(str(V.reason, j)); tally[g] = (tally[g] || 0) + 1; }
      Object.keys(tally).sort().forEach(function (g) { add(fr, el('option', { value: g }, g + ' (' + tally[g] + ')')); });
    }
    fr.hidden = !V.reason;

    var so = $('sort');
    add(so, el('option', { value: 'row' }, 'row order'));
    if (V.sort) {
      add(so, [el('option', { value: 'desc' }, label(V.sort) + ', high → low'), el('option', { value: 'asc' }, label(V.sort) + ', low → high')]);
    }
    if (V.order) add(so, el('option', { value: 'order' }, 'k-center pick order'));

    var search = $('q'), timer = null;
    search.addEventListener('input', function () {
      clearTimeout(timer);
      timer = setTimeout(function () { state.q = search.value; state.page = 0; update(true); }, 150);
    });
    [['f-status', 'status'], ['f-choice', 'choice'], ['f-selected', 'selected'], ['f-reason', 'reason'], ['sort', 'sort']].forEach(function (p) {
      $(p[0]).addEventListener('change', function () { state[p[1]] = $(p[0]).value; state.page = 0; update(true); });
    });
    $('reset').addEventListener('click', function () { clearFilters(); update(true); });
    var legend = $('legend');
    if (V.kind === 'recycle') {
      add(legend, ['Word-level changes: ', el('del', null, 'removed'), ' in the original (compared with the final text), ',
        el('ins', null, 'added'), ' in the teacher’s versions (compared with the text each replaced) and in the final text ',
        '(compared with the original). Link a row with its “row N” title.']);
    }
  }

  function clearFilters() {
    state.q = ''; state.status = ''; state.choice = ''; state.selected = ''; state.reason = ''; state.range = null; state.page = 0;
    $('q').value = ''; $('f-status').value = ''; $('f-choice').value = ''; $('f-selected').value = ''; $('f-reason').value = '';
  }

  function setFilter(name, value) {
    clearFilters();
    state[name] = value;
    var ids = { status: 'f-status', choice: 'f-choice', selected: 'f-selected', reason: 'f-reason' };
    if (ids[name]) $(ids[name]).value = value;
    update(true);
    $('browser').scrollIntoView();
  }

  function matcher() {
    var tests = [];
    if (state.status) {
      var p = state.status.split('='), col = p[0], kind = p.slice(1).join('=');
      if (col === '*') {
        var cols = (V.stages || []).map(function (s) { return s.status; }).filter(Boolean);
        tests.push(function (i) { return cols.some(function (c) { var k = kindOf(str(c, i)); return k && k !== 'ok'; }); });
      } else tests.push(function (i) { return kindOf(str(col, i)) === kind; });
    }
    if (state.choice) {
      var q = state.choice.split('='), ccol = q[0], value = q.slice(1).join('=');
      tests.push(function (i) { return (str(ccol, i) || '') === value; });
    }
    if (state.selected) { var want = state.selected === '1'; tests.push(function (i) { return isSelected(i) === want; }); }
    if (state.reason) tests.push(function (i) { return reasonGroup(str(V.reason, i)) === state.reason; });
    if (state.range) {
      var r = state.range;
      tests.push(function (i) { var v = num(r.col, i); return finite(v) && v >= r.lo && v < r.hi || (finite(v) && r.hi === Infinity && v >= r.lo); });
    }
    var needle = state.q.trim().toLowerCase();
    if (needle) {
      if (!lowered) lowered = S.map(function (s) { return s.toLowerCase(); });
      var hit = new Uint8Array(S.length);
      for (var k = 0; k < S.length; k++) if (lowered[k].indexOf(needle) >= 0) hit[k] = 1;
      var tcols = textColumns().map(function (c) { return C[c]; });
      var rowWord = /^(?:#?row-?|#)(\d+)$/.exec(needle);
      tests.push(function (i) {
        if (rowWord && Number(rowWord[1]) === i) return true;
        for (var t = 0; t < tcols.length; t++) { var idx = tcols[t][i]; if (idx !== null && hit[idx]) return true; }
        return false;
      });
    }
    return function (i) { for (var t = 0; t < tests.length; t++) if (!tests[t](i)) return false; return true; };
  }

  function computeFiltered() {
    var ok = matcher();
    var out = [];
    for (var i = 0; i < N; i++) if (ok(i)) out.push(i);
    if (state.sort === 'desc' || state.sort === 'asc') {
      var sign = state.sort === 'desc' ? -1 : 1;
      out.sort(function (a, b) {
        var x = num(V.sort, a), y = num(V.sort, b);
        if (!finite(x)) return finite(y) ? 1 : a - b;
        if (!finite(y)) return -1;
        return sign * (x - y) || a - b;
      });
    } else if (state.sort === 'order') {
      out.sort(function (a, b) {
        var x = num(V.order, a), y = num(V.order, b);
        if (x === null) return y === null ? a - b : 1;
        if (y === null) return -1;
        return x - y;
      });
    }
    filtered = out;
  }

  // ---------------------------------------------------------------------------------------------- rows
  function update(recompute) {
    if (recompute) computeFiltered();
    var pages = Math.max(1, Math.ceil(filtered.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    var start = state.page * state.size, end = Math.min(filtered.length, start + state.size);
    $('count').textContent = filtered.length
      ? 'Showing rows ' + (start + 1) + '–' + end + ' of ' + filtered.length.toLocaleString('en-US') + ' matching (' + N.toLocaleString('en-US') + ' in the run)'
      : 'No row matches (' + N.toLocaleString('en-US') + ' in the run).';
    renderChips();
    renderPager($('pager-top'), pages);
    renderPager($('pager-bottom'), pages);
    var box = $('rows');
    box.textContent = '';
    if (!filtered.length) add(box, el('div', { class: 'card empty-list muted' }, 'No row matches these filters.'));
    for (var k = start; k < end; k++) box.appendChild(rowCard(filtered[k]));
  }

  function renderChips() {
    var box = $('chips');
    box.textContent = '';
    if (state.range) {
      var r = state.range;
      add(box, el('span', { class: 'chip' }, r.label + ' in [' + (r.lo === -Infinity ? '−∞' : r.lo.toFixed(3)) + ', ' +
        (r.hi === Infinity ? '∞' : r.hi.toFixed(3)) + ')',
        el('button', { type: 'button', 'aria-label': 'remove', onclick: function () { state.range = null; update(true); } }, '×')));
    }
  }

  function renderPager(box, pages) {
    box.textContent = '';
    function go(p) { state.page = Math.max(0, Math.min(pages - 1, p)); update(false); window.scrollTo(0, $('browser').offsetTop); }
    add(box, [
      el('button', { type: 'button', class: 'prev', disabled: state.page === 0, onclick: function () { go(state.page - 1); } }, '‹ previous'),
      el('span', { class: 'small muted' }, 'page ' + (state.page + 1) + ' of ' + pages),
      el('button', { type: 'button', class: 'next', disabled: state.page >= pages - 1, onclick: function () { go(state.page + 1); } }, 'next ›')
    ]);
    var size = el('select', { 'aria-label': 'rows per page', onchange: function () { state.size = Number(size.value); state.page = 0; update(false); } });
    [10, 25, 50, 100].forEach(function (n) { add(size, el('option', { value: n, selected: n === state.size }, n + ' per page')); });
    add(box, size);
    var jump = el('input', { type: 'number', min: 0, max: N - 1, placeholder: 'row #', 'aria-label': 'go to row' });
    jump.addEventListener('keydown', function (e) { if (e.key === 'Enter' && jump.value !== '') location.hash = 'row-' + Number(jump.value); });
    add(box, jump);
  }

  function statusCell(s) {
    var k = kindOf(s);
    return el('td', { class: k === 'ok' ? 'status-ok' : (k ? 'status-bad' : '') }, s === null ? '–' : s);
  }

  function rowCard(i) {
    var card = el('article', { class: 'row', id: 'row-' + i, 'data-row': i });
    var head = el('header', null, el('a', { class: 'anchor', href: '#row-' + i, title: 'link to this row' }, 'row ' + i));
    var id = V.id ? str(V.id, i) : null;
    if (id !== null && id !== String(i)) add(head, el('span', { class: 'muted small' }, V.id_label + ' ' + id));
    if (V.selected) add(head, el('span', { class: 'badge ' + (isSelected(i) ? 'kept' : 'dropped') }, isSelected(i) ? 'kept' : 'dropped'));
    if (V.order && num(V.order, i) !== null) add(head, el('span', { class: 'badge order' }, 'pick ' + num(V.order, i)));
    if (V.reason) add(head, el('span', { class: 'reason small' }, str(V.reason, i)));
    card.appendChild(head);
    card.appendChild(V.kind === 'recycle' ? compareGrid(i) : plainGrid(i));
    card.appendChild(facts(i));
    return card;
  }

  function compareGrid(i) {
    var grid = el('div', { class: 'compare' },
      el('div', { class: 'head' }, ''), el('div', { class: 'head' }, 'original'), el('div', { class: 'head' }, 'teacher'),
      el('div', { class: 'head' }, 'final'));
    V.panels.forEach(function (p) {
      var orig = str(p.original, i) || '', fin = str(p.final, i) || '';
      var teacherTexts = p.teacher.map(function (t) { return str(t.text, i) || ''; });
      if (p.label === 'input' && !orig && !fin && teacherTexts.every(function (t) { return !t; })) return;
      var ops = diff(orig, fin);
      var cell = el('div', { class: 'teacher', 'data-col': 'teacher' });
      p.teacher.forEach(function (t, k) {
        var status = str(t.status, i), ok = kindOf(status) === 'ok';
        var used = ok && str(t.choice, i) === 'reflected';
        var cap = el('div', { class: 'cap' }, t.caption,
          ok ? el('span', { class: 'badge ' + (used ? 'used' : 'unused') }, used ? 'kept' : 'not kept') : el('span', { class: 'badge failed' }, kindOf(status) || 'missing'));
        var body;
        if (!ok) body = el('div', { class: 'failed-note' }, 'no teacher text: ' + (status || 'no status'));
        else if (!teacherTexts[k]) body = el('div', { class: 'text empty' }, p.label === 'input' ? '(none: the new instruction is self-contained)' : '(empty)');
        else body = diffNode(diff(str(t.base, i) || '', teacherTexts[k]), '+');
        add(cell, el('div', { class: 'version', 'data-version': t.text }, cap, body));
      });
      if (!p.teacher.length) add(cell, el('div', { class: 'text empty' }, '–'));
      add(grid, [
        el('div', { class: 'what' }, p.label),
        el('div', { 'data-col': 'original', 'data-field': p.original }, orig ? diffNode(ops, '-') : textNode('')),
        cell,
        el('div', { 'data-col': 'final', 'data-field': p.final }, fin ? diffNode(ops, '+') : textNode(''))
      ]);
    });
    return grid;
  }

  function plainGrid(i) {
    var grid = el('div', { class: 'compare plain' });
    (V.panels || []).forEach(function (p) {
      var t = str(p.text, i);
      if (p.label === 'input' && !t) return;
      add(grid, [el('div', { class: 'what' }, p.label), el('div', { 'data-col': p.label, 'data-field': p.text }, textNode(t))]);
    });
    return grid;
  }

  function facts(i) {
    var stages = el('table', { class: 'stages' }, el('tr', null, el('th', null, 'stage'), el('th', null, 'status'),
      el('th', null, 'choice'), el('th', null, 'why')));
    var other = el('div', { class: 'statuses small' });
    (V.stages || []).forEach(function (s) {
      var status = s.status ? str(s.status, i) : null;
      if (!s.choice) {  // a stage without a decision: its status as a chip
        var k = kindOf(status);
        add(other, el('span', { class: 'chip ' + (k === 'ok' ? 'good' : 'bad'), 'data-status': s.status }, s.label + ': ' + (status || '–')));
        return;
      }
      add(stages, el('tr', { 'data-stage': s.status }, el('td', null, s.label), statusCell(status),
        el('td', null, str(s.choice, i) || '–'), el('td', null, s.reason ? str(s.reason, i) || '–' : '–')));
    });
    if (V.reason) {
      add(stages, el('tr', null, el('td', null, 'selection'), el('td', { class: isSelected(i) ? 'status-ok' : 'status-bad' }, isSelected(i) ? 'kept' : 'dropped'),
        el('td', null, V.order && num(V.order, i) !== null ? 'pick ' + num(V.order, i) : '–'), el('td', null, str(V.reason, i))));
    }
    var sc = V.scores || { heads: [], rows: [] };
    var scores = el('table', { class: 'scores' });
    var hr = el('tr', null, el('th', null, 'score'));
    sc.heads.forEach(function (h) { add(hr, el('th', { class: 'num' }, h)); });
    add(scores, hr);
    sc.rows.forEach(function (r) {
      var tr = el('tr', null, el('td', null, r[0]));
      r[1].forEach(function (col) { add(tr, el('td', { class: 'num' }, col ? fmt(num(col, i)) : '–')); });
      add(scores, tr);
    });
    return el('div', { class: 'facts' }, el('div', null, stages, other), sc.rows.length ? el('div', null, scores) : el('div'));
  }

  // ---------------------------------------------------------------------------------------------- links
  function goToHash() {
    var m = /^#row-(\d+)$/.exec(location.hash);
    if (!m) return;
    var i = Number(m[1]);
    if (!(i >= 0 && i < N)) { $('count').textContent = 'There is no row ' + i + ' in this run (rows 0–' + (N - 1) + ').'; return; }
    var pos = filtered.indexOf(i);
    if (pos < 0) { clearFilters(); computeFiltered(); pos = filtered.indexOf(i); }
    state.page = Math.floor(pos / state.size);
    update(false);
    var card = $('row-' + i);
    if (card) {
      card.classList.add('target');
      card.style.scrollMarginTop = ($('filters').offsetHeight + 12) + 'px';  // clear of the sticky filter bar
      card.scrollIntoView({ block: 'start' });
    }
  }

  // ---------------------------------------------------------------------------------------------- start
  function start(data) {
    D = data; S = D.strings; C = D.columns; V = D.view; N = D.n; META = D.meta || {};
    Object.keys(D.kinds || {}).forEach(function (k) { KINDS[S[Number(k)]] = D.kinds[k]; });
    $('loading').hidden = true;
    $('overview').hidden = false;
    $('browser').hidden = false;
    renderOverview();
    buildFilters();
    computeFiltered();
    update(false);
    window.addEventListener('hashchange', goToHash);
    goToHash();
    document.body.setAttribute('data-ready', '1');
  }

  loadData().then(start).catch(function (err) {
    var box = $('loading');
    box.className = 'warn';
    box.textContent = 'The report could not be shown: ' + (err && err.message ? err.message : err);
    document.body.setAttribute('data-ready', 'error');
    throw err;
  });
})();
