'use strict';
// arbstr ledger dashboard. Reads the admin API beside this page (stats,
// requests, budgets) and draws everything with plain DOM and SVG. Every string
// from the API reaches the page through textContent or setAttribute only.
(function () {
	const REFRESH_MS = 10000;
	const PAGE_SIZE = 50;
	const HOUR = 3600e3, DAY = 24 * HOUR;
	// Each range picks the bucket its time series is grouped by.
	const RANGES = {
		'1h': { ms: HOUR, bucket: 'hour' },
		'24h': { ms: DAY, bucket: 'hour' },
		'7d': { ms: 7 * DAY, bucket: 'day' },
		'30d': { ms: 30 * DAY, bucket: 'day' },
	};
	const PALETTE = ['#2f5fd0', '#e07b24', '#1a9e77', '#c2417e', '#7b61c9', '#b59a1b',
		'#2a9fd6', '#8c564b', '#5f8f2f', '#d64a3b'];
	const SVG = 'http://www.w3.org/2000/svg';

	// The API sits beside the page: /arbstr/dashboard reads /arbstr/stats.
	const m = location.pathname.match(/^(.*\/)dashboard\/?$/);
	const base = m ? m[1] : '';

	const state = {
		range: RANGES[location.hash.slice(1)] ? location.hash.slice(1) : '24h',
		timer: null,
		run: 0,            // increases with every refresh; late answers of older runs are dropped
		cursor: '',        // next_cursor of the last requests page shown
		pagesShown: 0,
		rowIDs: new Set(),
		providers: [],     // provider names in a stable order, for stable colours
	};

	const $ = (id) => document.getElementById(id);

	// el builds an element; text (if any) goes in through textContent.
	function el(tag, attrs, text) {
		const e = document.createElement(tag);
		for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
		if (text !== undefined && text !== null) e.textContent = String(text);
		return e;
	}
	function svg(tag, attrs, text) {
		const e = document.createElementNS(SVG, tag);
		for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
		if (text !== undefined && text !== null) e.textContent = String(text);
		return e;
	}
	function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); return node; }

	// num reads a JSON number defensively: anything else counts as 0.
	function num(v) { return typeof v === 'number' && isFinite(v) ? v : 0; }

	// fmt groups thousands with commas and keeps at most two decimals, the
	// same in every browser locale.
	function fmt(v) {
		if (typeof v !== 'number' || !isFinite(v)) return '–';
		const neg = v < 0;
		let s = (Math.round(Math.abs(v) * 100) / 100).toString();
		if (s.indexOf('e') >= 0) s = Math.abs(v).toFixed(2);
		let [int, frac] = s.split('.');
		int = int.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
		return (neg ? '-' : '') + int + (frac ? '.' + frac : '');
	}
	function pct(part, whole) {
		if (!(num(whole) > 0)) return '–';
		return (Math.round(num(part) / num(whole) * 1000) / 10).toFixed(1) + ' %';
	}
	function providerName(p) { return typeof p === 'string' && p !== '' ? p : '(none answered)'; }
	function pad(n) { return n < 10 ? '0' + n : '' + n; }
	function utc(ms, withDate, withTime) {
		const d = new Date(ms);
		const date = d.getUTCFullYear() + '-' + pad(d.getUTCMonth() + 1) + '-' + pad(d.getUTCDate());
		const time = pad(d.getUTCHours()) + ':' + pad(d.getUTCMinutes());
		return (withDate ? date : '') + (withDate && withTime ? ' ' : '') + (withTime ? time : '');
	}
	// bucketTime reads a day or hour key: RFC 3339, a bare date, or Unix seconds/ms.
	function bucketTime(v) {
		if (typeof v === 'number') return v < 1e11 ? v * 1000 : v;
		if (typeof v !== 'string') return NaN;
		if (/^\d{4}-\d{2}-\d{2}$/.test(v)) return Date.parse(v + 'T00:00:00Z');
		if (/^\d{4}-\d{2}-\d{2}[T ]\d{2}$/.test(v)) return Date.parse(v.slice(0, 10) + 'T' + v.slice(11) + ':00:00Z');
		return Date.parse(v);
	}

	class APIError extends Error {
		constructor(what, status, message) {
			super(message);
			this.what = what;
			this.status = status;
		}
		toString() {
			return 'Could not load ' + this.what + (this.status ? ' (HTTP ' + this.status + ')' : '') +
				': ' + this.message;
		}
	}

	async function getJSON(what, params) {
		const q = new URLSearchParams(params || {}).toString();
		// A page opened as http://user:password@host/… may not fetch URLs
		// that carry the password; the browser sends it for same-origin
		// requests anyway.
		const url = new URL(base + what + (q ? '?' + q : ''), location.href);
		url.username = '';
		url.password = '';
		let resp;
		try {
			resp = await fetch(url.href,
				{ headers: { Accept: 'application/json' }, cache: 'no-store', credentials: 'same-origin' });
		} catch (e) {
			throw new APIError(what, 0, 'no answer (' + e.message + ')');
		}
		const text = await resp.text();
		let body = null;
		try { body = text ? JSON.parse(text) : null; } catch (e) { body = undefined; }
		if (!resp.ok) {
			const msg = body && typeof body.error === 'string' ? body.error : text.slice(0, 300) || resp.statusText;
			throw new APIError(what, resp.status, msg);
		}
		if (body === undefined || body === null || typeof body !== 'object') {
			throw new APIError(what, resp.status, 'the answer is not a JSON object');
		}
		return body;
	}

	// ---------- totals ----------

	function showTotals(t) {
		$('t-requests').textContent = fmt(num(t.requests));
		$('t-succeeded').textContent = fmt(num(t.succeeded));
		$('t-failed').textContent = fmt(num(t.failed));
		$('t-cost').textContent = fmt(num(t.cost_sats));
		$('t-dearest').textContent = fmt(num(t.dearest_cost_sats));
		$('t-saved').textContent = fmt(num(t.saved_sats));
		$('t-saved-pct').textContent = pct(t.saved_sats, t.dearest_cost_sats);
	}

	// ---------- colours and legends ----------

	function colourOf(provider) {
		let i = state.providers.indexOf(provider);
		if (i < 0) { state.providers.push(provider); i = state.providers.length - 1; }
		return PALETTE[i % PALETTE.length];
	}
	function swatch(colour) {
		const s = svg('svg', { class: 'swatch', viewBox: '0 0 10 10', width: 10, height: 10, 'aria-hidden': 'true' });
		s.appendChild(svg('rect', { width: 10, height: 10, rx: 2, fill: colour }));
		return s;
	}
	function legend(items) {
		const l = el('div', { class: 'legend' });
		for (const it of items) {
			const span = el('span', { class: 'legend-item' });
			span.appendChild(swatch(it.colour));
			span.appendChild(document.createTextNode(it.label));
			l.appendChild(span);
		}
		return l;
	}
	function message(node, text, cls) {
		clear(node).appendChild(el('p', { class: cls || 'empty' }, text));
	}

	// niceTicks returns round tick values from 0 to at least max.
	function niceTicks(max, count) {
		if (!(max > 0)) return [0, 1];
		const raw = max / count;
		const mag = Math.pow(10, Math.floor(Math.log10(raw)));
		const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw);
		const ticks = [];
		for (let v = 0; v < max + step / 2; v += step) ticks.push(Math.round(v * 1e6) / 1e6);
		if (ticks[ticks.length - 1] < max) ticks.push(ticks[ticks.length - 1] + step);
		return ticks;
	}

	// ---------- time series (stacked bars per bucket, one colour per provider) ----------

	// buckets lays out the range's time buckets; series maps bucket start →
	// provider → value. Keys that are not times are shown in their own order.
	function timeSeries(groups, bucket, field) {
		const series = new Map();
		const providers = new Set();
		let parsable = true;
		for (const g of groups) {
			const key = g && g.key ? g.key : {};
			const t = bucketTime(key[bucket]);
			if (isNaN(t)) parsable = false;
			const at = isNaN(t) ? String(key[bucket]) : t;
			const p = providerName(key.provider);
			providers.add(p);
			if (!series.has(at)) series.set(at, new Map());
			const row = series.get(at);
			row.set(p, (row.get(p) || 0) + num(g[field]));
		}
		let slots;
		if (parsable) {
			const step = bucket === 'hour' ? HOUR : DAY;
			const now = Date.now();
			const first = Math.floor((now - RANGES[state.range].ms) / step) * step;
			const times = new Set();
			for (let t = first; t <= now; t += step) times.add(t);
			for (const t of series.keys()) times.add(t);
			slots = Array.from(times).sort((a, b) => a - b);
		} else {
			slots = Array.from(series.keys()).sort();
		}
		return { slots, series, providers: Array.from(providers), parsable };
	}

	function drawTimeChart(node, groups, bucket, field, emptyText) {
		const ts = timeSeries(groups, bucket, field);
		let max = 0, any = false;
		for (const row of ts.series.values()) {
			let sum = 0;
			for (const v of row.values()) { sum += Math.max(v, 0); if (v !== 0) any = true; }
			max = Math.max(max, sum);
		}
		clear(node);
		if (!any) { message(node, emptyText); return; }
		const W = 900, H = 240, L = 60, R = 10, T = 10, B = 28;
		const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': field + ' by provider over time' });
		const ticks = niceTicks(max, 4);
		const top = ticks[ticks.length - 1];
		const y = (v) => T + (H - T - B) * (1 - v / top);
		for (const tv of ticks) {
			s.appendChild(svg('line', { class: tv === 0 ? 'axis' : 'grid', x1: L, x2: W - R, y1: y(tv), y2: y(tv) }));
			s.appendChild(svg('text', { x: L - 6, y: y(tv) + 4, 'text-anchor': 'end' }, fmt(tv)));
		}
		const n = ts.slots.length;
		const slotW = (W - L - R) / Math.max(n, 1);
		const barW = Math.max(1, slotW * 0.7);
		const labelEvery = Math.max(1, Math.ceil(n / 8));
		ts.slots.forEach((slot, i) => {
			const x = L + i * slotW + (slotW - barW) / 2;
			const row = ts.series.get(slot);
			let acc = 0;
			if (row) {
				for (const p of state.providers.concat(ts.providers.filter((p) => !state.providers.includes(p)))) {
					const v = row.get(p);
					if (!(v > 0)) continue;
					const r = svg('rect', { x, y: y(acc + v), width: barW, height: Math.max(0.5, y(acc) - y(acc + v)), fill: colourOf(p) });
					r.appendChild(svg('title', {}, p + ' · ' + slotLabel(slot, bucket, ts.parsable, true) + ': ' + fmt(v) + ' sats'));
					s.appendChild(r);
					acc += v;
				}
			}
			if (i % labelEvery === 0) {
				s.appendChild(svg('text', { x: L + i * slotW + slotW / 2, y: H - B + 16, 'text-anchor': 'middle' },
					slotLabel(slot, bucket, ts.parsable, false)));
			}
		});
		s.appendChild(svg('line', { class: 'axis', x1: L, x2: L, y1: T, y2: H - B }));
		node.appendChild(s);
		node.appendChild(legend(ts.providers.map((p) => ({ label: p, colour: colourOf(p) }))));
	}
	function slotLabel(slot, bucket, parsable, long) {
		if (!parsable) return String(slot);
		if (bucket === 'hour') return utc(slot, long || new Date(slot).getUTCHours() === 0, true);
		return utc(slot, true, false);
	}

	// ---------- outcomes and latency (horizontal bars per provider) ----------

	function hbars(node, rows, parts, unit, emptyText) {
		clear(node);
		if (!rows.length) { message(node, emptyText); return; }
		const max = Math.max(1, ...rows.map((r) => parts.reduce((a, p) => p.stacked ? a + r[p.field] : Math.max(a, r[p.field]), 0)));
		const rowH = parts.every((p) => p.stacked) ? 22 : 14 * parts.length + 8;
		const W = 560, L = 150, R = 90, H = rows.length * rowH + 8;
		const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
		rows.forEach((r, i) => {
			const y0 = 4 + i * rowH;
			const name = r.label.length > 22 ? r.label.slice(0, 21) + '…' : r.label;
			const t = svg('text', { x: L - 8, y: y0 + rowH / 2 + 2, 'text-anchor': 'end' }, name);
			t.appendChild(svg('title', {}, r.label));
			s.appendChild(t);
			let x = L;
			parts.forEach((p, j) => {
				const v = r[p.field];
				const w = (W - L - R) * v / max;
				const by = p.stacked ? y0 + 2 : y0 + 2 + j * 14;
				const bh = p.stacked ? rowH - 6 : 12;
				const bx = p.stacked ? x : L;
				const rect = svg('rect', { x: bx, y: by, width: Math.max(0, w), height: bh, fill: p.colour });
				rect.appendChild(svg('title', {}, r.label + ' · ' + p.label + ': ' + fmt(v) + (unit ? ' ' + unit : '')));
				s.appendChild(rect);
				if (p.stacked) x += w;
				else s.appendChild(svg('text', { x: L + Math.max(0, w) + 4, y: by + 10 }, fmt(v)));
			});
			if (parts.every((p) => p.stacked)) {
				s.appendChild(svg('text', { x: x + 4, y: y0 + rowH / 2 + 2 },
					parts.map((p) => fmt(r[p.field])).join(' / ')));
			}
		});
		node.appendChild(s);
		node.appendChild(legend(parts.map((p) => ({ label: p.label, colour: p.colour }))));
	}

	function providerRows(groups) {
		return groups.filter((g) => g && g.key).map((g) => ({
			label: providerName(g.key.provider),
			succeeded: num(g.succeeded), failed: num(g.failed), requests: num(g.requests),
			p50: num(g.latency_ms_p50), p95: num(g.latency_ms_p95),
		})).sort((a, b) => b.requests - a.requests || (a.label < b.label ? -1 : 1));
	}

	function drawOutcomes(groups) {
		hbars($('outcomes-chart'), providerRows(groups), [
			{ field: 'succeeded', label: 'succeeded', colour: '#1a9e77', stacked: true },
			{ field: 'failed', label: 'failed', colour: '#d64a3b', stacked: true },
		], 'requests', 'No requests in this range.');
	}
	function drawLatency(groups) {
		const rows = providerRows(groups).filter((r) => r.label !== '(none answered)');
		hbars($('latency-chart'), rows, [
			{ field: 'p50', label: 'p50', colour: '#2f5fd0' },
			{ field: 'p95', label: 'p95', colour: '#7b61c9' },
		], 'ms', 'No answered requests in this range.');
	}

	// ---------- budgets ----------

	function drawBudgets(result) {
		const node = clear($('budgets'));
		if (result.error) {
			if (result.error.status === 404) { message(node, 'No budgets configured.'); return; }
			message(node, result.error.toString(), 'error');
			return;
		}
		const list = Array.isArray(result.body.budgets) ? result.body.budgets : [];
		if (!list.length) { message(node, 'No budgets configured.'); return; }
		const table = el('table', { id: 'budgets-table' });
		const head = el('tr');
		for (const h of ['Budget', 'Per', 'Key', 'Period', 'Since', 'Limit', 'Spent', 'Reserved', 'Left', 'Use'])
			head.appendChild(el('th', ['Limit', 'Spent', 'Reserved', 'Left'].includes(h) ? { class: 'num' } : {}, h));
		table.appendChild(el('thead')).appendChild(head);
		const body = table.appendChild(el('tbody'));
		for (const b of list) {
			if (!b || typeof b !== 'object') continue;
			const limit = num(b.limit), spent = num(b.spent), reserved = num(b.reserved);
			const tr = el('tr');
			tr.appendChild(el('td', {}, b.name));
			tr.appendChild(el('td', {}, b.per));
			tr.appendChild(el('td', {}, b.key === '' ? '(none)' : b.key));
			tr.appendChild(el('td', {}, b.period));
			tr.appendChild(el('td', {}, typeof b.period_start === 'string' ? b.period_start : ''));
			tr.appendChild(el('td', { class: 'num' }, fmt(limit)));
			tr.appendChild(el('td', { class: 'num' }, fmt(spent)));
			tr.appendChild(el('td', { class: 'num' }, fmt(reserved)));
			tr.appendChild(el('td', { class: 'num' }, fmt(Math.max(0, limit - spent - reserved))));
			const cell = el('td', { class: 'bar' });
			cell.appendChild(budgetBar(limit, spent, reserved));
			tr.appendChild(cell);
			body.appendChild(tr);
		}
		node.appendChild(table);
	}
	function budgetBar(limit, spent, reserved) {
		const W = 200;
		const s = svg('svg', { viewBox: `0 0 ${W} 16`, preserveAspectRatio: 'none', role: 'img' });
		const used = limit > 0 ? (spent + reserved) / limit : 0;
		s.setAttribute('aria-label', pct(spent + reserved, limit) + ' of the limit used or reserved');
		s.appendChild(svg('rect', { class: 'track', width: W, height: 16, rx: 3 }));
		const sw = limit > 0 ? Math.min(W, W * spent / limit) : 0;
		const rw = limit > 0 ? Math.min(W - sw, W * reserved / limit) : 0;
		s.appendChild(svg('rect', { class: used >= 1 ? 'over' : 'spent', width: sw, height: 16, rx: 3 }));
		s.appendChild(svg('rect', { class: 'reserved', x: sw, width: rw, height: 16 }));
		s.appendChild(svg('title', {}, 'spent ' + fmt(spent) + ', reserved ' + fmt(reserved) + ' of ' + fmt(limit) + ' sats'));
		return s;
	}

	// ---------- requests table ----------

	function requestRow(r) {
		const tr = el('tr');
		const t = typeof r.time === 'string' ? Date.parse(r.time) : NaN;
		const cell = (v, cls) => tr.appendChild(el('td', cls ? { class: cls } : {}, v === undefined || v === null ? '' : v));
		const timeCell = cell(isNaN(t) ? r.time : utc(t, true, true) + ':' + pad(new Date(t).getUTCSeconds()));
		if (typeof r.id === 'string') timeCell.setAttribute('title', 'request ' + r.id);
		cell(providerName(r.provider));
		cell(r.upstream_model && r.upstream_model !== r.model ? r.model + ' → ' + r.upstream_model : r.model);
		cell(r.policy);
		cell(r.client);
		cell(r.status);
		cell(r.outcome, r.outcome === 'ok' || r.outcome === 'continued' ? 'ok' : 'bad');
		cell(r.stream === true ? 'yes' : 'no');
		cell(fmt(num(r.prompt_tokens)) + ' / ' + fmt(num(r.completion_tokens)), 'num');
		cell(fmt(num(r.cost_sats)), 'num');
		cell(fmt(num(r.dearest_cost_sats) - num(r.cost_sats)), 'num');
		cell(fmt(num(r.latency_ms)), 'num');
		cell(fmt(num(r.attempts)), 'num');
		cell(r.error_code);
		return tr;
	}

	// showRequests puts a page of rows in the table: the first page replaces
	// what is shown (or, after "load more", adds the rows that are new on
	// top), a later page goes below.
	function showRequests(body, appending) {
		const tbody = $('requests').tBodies[0];
		const rows = Array.isArray(body.requests) ? body.requests.filter((r) => r && typeof r === 'object') : [];
		if (appending) {
			for (const r of rows) {
				if (state.rowIDs.has(r.id)) continue;
				state.rowIDs.add(r.id);
				tbody.appendChild(requestRow(r));
			}
			state.cursor = typeof body.next_cursor === 'string' ? body.next_cursor : '';
			state.pagesShown++;
		} else if (state.pagesShown > 1) {
			const fresh = [];
			for (const r of rows) { if (state.rowIDs.has(r.id)) break; fresh.push(r); }
			let anchor = tbody.firstChild;
			for (const r of fresh) { state.rowIDs.add(r.id); tbody.insertBefore(requestRow(r), anchor); }
		} else {
			clear(tbody);
			state.rowIDs = new Set();
			for (const r of rows) { state.rowIDs.add(r.id); tbody.appendChild(requestRow(r)); }
			state.cursor = typeof body.next_cursor === 'string' ? body.next_cursor : '';
			state.pagesShown = 1;
		}
		$('more').hidden = !state.cursor;
		const n = tbody.rows.length;
		$('requests-note').textContent = n === 0 ? 'No requests recorded yet.' :
			n + (n === 1 ? ' request' : ' requests') + ' shown' + (state.cursor ? '; older ones with “Load more”.' : ', the oldest included.');
	}

	async function loadMore() {
		if (!state.cursor) return;
		const button = $('more');
		button.disabled = true;
		try {
			showRequests(await getJSON('requests', { limit: PAGE_SIZE, cursor: state.cursor }), true);
		} catch (e) {
			$('requests-note').textContent = String(e);
			$('requests-note').className = 'note error';
		} finally {
			button.disabled = false;
		}
	}

	// ---------- refresh ----------

	async function settle(p) {
		try { return { body: await p }; } catch (e) { return { error: e instanceof APIError ? e : new APIError('data', 0, e.message) }; }
	}

	// refresh loads everything again; a failure of its own (a bug, not an
	// answer of the API) still shows, never a silent page.
	function refresh() {
		return load().catch((e) => {
			const banner = $('banner');
			clear(banner).appendChild(el('div', {}, 'The dashboard failed: ' + (e && e.message ? e.message : String(e))));
			banner.hidden = false;
			document.body.setAttribute('data-state', 'error');
		});
	}

	async function load() {
		const run = ++state.run;
		const r = RANGES[state.range];
		const since = state.range;
		const [total, series, byProvider, requests, budgets] = await Promise.all([
			settle(getJSON('stats', { since })),
			settle(getJSON('stats', { since, group_by: r.bucket + ',provider' })),
			settle(getJSON('stats', { since, group_by: 'provider' })),
			settle(getJSON('requests', { limit: PAGE_SIZE })),
			settle(getJSON('budgets')),
		]);
		if (run !== state.run) return; // a newer refresh (another range) has started
		const errors = [];
		const panel = (res, draw, nodes) => {
			if (res.error) {
				errors.push(String(res.error));
				for (const id of nodes) message($(id), String(res.error), 'error');
				return;
			}
			try { draw(res.body); } catch (e) {
				errors.push('Could not draw: ' + e.message);
				for (const id of nodes) message($(id), 'Could not draw this: ' + e.message, 'error');
			}
		};
		// Stable colours: providers in the order of their request counts.
		if (byProvider.body && Array.isArray(byProvider.body.groups)) {
			for (const row of providerRows(byProvider.body.groups)) colourOf(row.label);
		}
		panel(total, (b) => showTotals(b.total && typeof b.total === 'object' ? b.total : {}), []);
		if (total.error) for (const id of ['t-requests', 't-succeeded', 't-failed', 't-cost', 't-dearest', 't-saved', 't-saved-pct']) $(id).textContent = '–';
		panel(series, (b) => {
			const groups = Array.isArray(b.groups) ? b.groups : [];
			drawTimeChart($('spend-chart'), groups, r.bucket, 'cost_sats', 'No spend in the last ' + since + '.');
			drawTimeChart($('saved-chart'), groups, r.bucket, 'saved_sats', 'No savings in the last ' + since + '.');
		}, ['spend-chart', 'saved-chart']);
		panel(byProvider, (b) => {
			const groups = Array.isArray(b.groups) ? b.groups : [];
			drawOutcomes(groups);
			drawLatency(groups);
		}, ['outcomes-chart', 'latency-chart']);
		panel(requests, (b) => { $('requests-note').className = 'note'; showRequests(b, false); }, []);
		if (requests.error) { $('requests-note').textContent = String(requests.error); $('requests-note').className = 'note error'; }
		drawBudgets(budgets);
		if (budgets.error && budgets.error.status !== 404) errors.push(String(budgets.error));

		const banner = $('banner');
		if (errors.length) {
			clear(banner);
			for (const e of errors) banner.appendChild(el('div', {}, e));
			banner.hidden = false;
		} else {
			banner.hidden = true;
		}
		$('updated').textContent = (errors.length ? 'Tried at ' : 'Updated ') + utc(Date.now(), false, true) +
			':' + pad(new Date().getUTCSeconds()) + ' UTC · last ' + since;
		document.body.setAttribute('data-state', errors.length ? 'error' : 'ready');
	}

	function schedule() {
		clearInterval(state.timer);
		state.timer = $('auto').checked ? setInterval(refresh, REFRESH_MS) : null;
	}
	function pickRange(range) {
		state.range = range;
		for (const b of document.querySelectorAll('#range button'))
			b.setAttribute('aria-pressed', String(b.getAttribute('data-range') === range));
		if (location.hash.slice(1) !== range) history.replaceState(null, '', '#' + range);
		state.pagesShown = 0;
		refresh();
		schedule();
	}

	for (const b of document.querySelectorAll('#range button'))
		b.addEventListener('click', () => pickRange(b.getAttribute('data-range')));
	$('auto').addEventListener('change', schedule);
	$('refresh').addEventListener('click', () => { refresh(); schedule(); });
	$('more').addEventListener('click', loadMore);
	window.addEventListener('hashchange', () => {
		const r = location.hash.slice(1);
		if (RANGES[r] && r !== state.range) pickRange(r);
	});
	pickRange(state.range);
})();
