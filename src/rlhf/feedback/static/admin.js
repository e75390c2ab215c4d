// The admin page: campaigns (progress, annotators, agreement, status, export), rlhf loop runs
// (rounds as a chart, starting a round), new campaigns from a JSON Lines file, and accounts
// with their tokens.
import { $, api, clearError, el, fail, session, toast } from './common.js';

let selected = null; // the campaign in the details panel

const orNa = (value) => (value === null || value === undefined ? 'n/a' : String(value));
const percent = (value) => (value === null || value === undefined ? 'n/a' : `${(100 * value).toFixed(1)} %`);
const row = (attrs, cells) => el('tr', attrs, cells.map((cell) => el('td', {}, cell)));

async function loadCampaigns() {
  let campaigns;
  try {
    campaigns = await api('GET', '/api/admin/campaigns');
  } catch (error) {
    return fail(error, loadCampaigns);
  }
  $('no-campaigns').hidden = campaigns.length > 0;
  $('campaigns').tBodies[0].replaceChildren(...campaigns.map((c) => {
    const open = () => showCampaign(c.id, true);
    return row({
      tabindex: 0, class: c.id === selected ? 'clickable current' : 'clickable', 'data-testid': `admin-campaign-${c.id}`,
      'data-id': c.id, onclick: open, onkeydown: (event) => { if (event.key === 'Enter') open(); },
    }, [c.name, c.task_type, String(c.k), c.status, String(c.items), String(c.labels)]);
  }));
}

const SVG = 'http://www.w3.org/2000/svg';
/** An SVG element (el() makes HTML ones). */
function svg(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  for (const child of children) node.append(child);
  return node;
}

// the chart's lines: a round summary's key, its name, its colour
const SERIES = [
  ['rm_accuracy_fresh', 'RM accuracy on fresh labels', '#2563eb'],
  ['win_rate_vs_previous', 'win rate vs previous round (gold)', '#16a34a'],
  ['human_win_rate', 'win rate vs previous round (people)', '#d97706'],
];

/** Labels per round as bars (left scale) and the rates in [0, 1] as lines (right scale). */
function loopChart(loop) {
  const width = 640; const height = 220; const left = 40; const right = 40; const top = 12; const bottom = 28;
  const rounds = loop.rounds;
  const plotW = width - left - right; const plotH = height - top - bottom;
  const step = plotW / Math.max(rounds.length, 1);
  const most = Math.max(1, ...rounds.map((r) => r.labels));
  const x = (index) => left + step * (index + 0.5);
  const yLabels = (value) => top + plotH * (1 - value / most);
  const yRate = (value) => top + plotH * (1 - value);
  const chart = svg('svg', { viewBox: `0 0 ${width} ${height}`, class: 'loop-chart', role: 'img', 'data-testid': `loop-chart-${loop.id}`,
    'aria-label': `${loop.name}: labels, reward-model accuracy and win rate per round` });
  chart.append(svg('line', { x1: left, y1: top + plotH, x2: width - right, y2: top + plotH, class: 'axis' }));
  chart.append(svg('line', { x1: left, y1: top + plotH / 2, x2: width - right, y2: top + plotH / 2, class: 'axis', 'stroke-dasharray': '4 3' }));
  chart.append(svg('text', { x: 2, y: top + 10 }, String(most)), svg('text', { x: 2, y: top + plotH }, '0'));
  chart.append(svg('text', { x: width - right + 4, y: top + 10 }, '1.0'), svg('text', { x: width - right + 4, y: top + plotH / 2 + 4 }, '0.5'));
  rounds.forEach((r, index) => {
    const barTop = yLabels(r.labels);
    chart.append(svg('rect', { x: x(index) - step * 0.3, y: barTop, width: step * 0.6, height: top + plotH - barTop, class: 'bar', 'data-testid': 'loop-bar' },
      svg('title', {}, `round ${r.number}: ${r.labels} labels`)));
    chart.append(svg('text', { x: x(index) - 4, y: height - 8 }, String(r.number)));
  });
  for (const [key, name, colour] of SERIES) {
    const points = rounds.map((r, index) => [index, r.summary?.[key]]).filter(([, value]) => typeof value === 'number');
    if (!points.length) continue;
    chart.append(svg('polyline', { points: points.map(([i, v]) => `${x(i)},${yRate(v)}`).join(' '), fill: 'none', stroke: colour, 'stroke-width': 2 }));
    for (const [i, v] of points) {
      chart.append(svg('circle', { cx: x(i), cy: yRate(v), r: 3.5, fill: colour, 'data-testid': `loop-point-${key}` },
        svg('title', {}, `round ${rounds[i].number}: ${name} ${v.toFixed(3)}`)));
    }
  }
  return chart;
}

const fixed = (value, digits = 3) => (typeof value === 'number' ? value.toFixed(digits) : 'n/a');

function loopView(loop) {
  const s = loop.settings;
  const waiting = loop.rounds.find((r) => r.status === 'waiting');
  const head = el('h3', {}, loop.name, ' ', el('span', { class: 'pill' }, `${s.selection} selection · ${s.policy} · ${s.bots} bot${s.bots === 1 ? '' : 's'}`));
  const children = [head];
  if (waiting) {
    children.push(el('div', { class: 'buttons' }, el('button', {
      type: 'button', class: 'primary', 'data-testid': `start-round-${loop.id}`, onclick: () => startRound(loop.id),
    }, `Start round ${waiting.number}`)));
  }
  children.push(loopChart(loop));
  // the swatches' colours are in app.css (.swatch.s0 ...): the page allows no inline styles
  children.push(el('div', { class: 'legend' }, el('span', {}, el('span', { class: 'swatch bars' }), 'labels'),
    ...SERIES.map(([, name], index) => el('span', {}, el('span', { class: `swatch s${index}` }), name))));
  const rows = loop.rounds.map((r) => row({ 'data-testid': 'loop-round' }, [
    String(r.number), r.status, String(r.labels), fixed(r.summary?.rm_accuracy_fresh), fixed(r.summary?.gold, 4),
    fixed(r.summary?.win_rate_vs_previous), fixed(r.summary?.human_win_rate)]));
  children.push(el('div', { class: 'scroll' }, el('table', { 'data-testid': `loop-rounds-${loop.id}` },
    el('thead', {}, el('tr', {}, ...['Round', 'Status', 'Labels', 'RM accuracy (fresh)', 'Gold', 'Win rate (gold)', 'Win rate (people)'].map((t) => el('th', {}, t)))),
    el('tbody', {}, ...rows))));
  const rated = [...loop.rounds].reverse().find((r) => r.summary?.ratings)?.summary.ratings;
  if (rated) {
    const ranked = Object.entries(rated).sort((a, b) => b[1].elo - a[1].elo);
    children.push(el('p', { 'data-testid': `loop-ratings-${loop.id}` }, 'Checkpoints rated by people (Bradley–Terry, Elo): ',
      ranked.map(([model, r]) => `${model} ${r.elo.toFixed(0)} ± ${r.elo_se.toFixed(0)}`).join(' · ')));
  }
  return el('div', { class: 'loop', 'data-testid': `loop-${loop.id}` }, ...children);
}

async function loadLoops() {
  let loops;
  try {
    loops = await api('GET', '/api/admin/loops');
  } catch (error) {
    return fail(error, loadLoops);
  }
  $('loops-panel').hidden = loops.length === 0;
  $('loops').replaceChildren(...loops.map(loopView));
  return loops;
}

async function startRound(loopId) {
  try {
    const started = await api('POST', `/api/admin/loops/${loopId}/start`);
    toast(`round ${started.number} started`);
  } catch (error) {
    return fail(error);
  }
  return loadLoops();
}

async function showCampaign(id, scroll = false) {
  let c;
  try {
    c = await api('GET', `/api/admin/campaigns/${id}`);
  } catch (error) {
    return fail(error, () => showCampaign(id, scroll));
  }
  selected = id;
  for (const tr of $('campaigns').tBodies[0].rows) tr.classList.toggle('current', Number(tr.dataset.id) === id);
  const s = c.stats;
  $('detail').hidden = false;
  $('detail-name').textContent = `${c.name} · ${c.task_type}`;
  $('detail-progress').max = Math.max(s.items, 1);
  $('detail-progress').value = s.complete_items;
  $('detail-progress-text').textContent = `${s.complete_items} of ${s.items} items complete (${c.k} annotator${c.k === 1 ? '' : 's'} each)`;
  const counts = { status: c.status, labels: s.labels, pending: s.pending, skipped: s.skipped, render: c.render };
  $('detail-counts').replaceChildren(...Object.entries(counts).map(([name, value]) => el('div', {},
    el('dt', {}, name), el('dd', { 'data-testid': `count-${name}` }, String(value)))));
  for (const button of document.querySelectorAll('[data-status]')) {
    button.setAttribute('aria-pressed', String(button.dataset.status === c.status));
  }
  $('annotators').tBodies[0].replaceChildren(...s.annotators.map((a) => row({ 'data-testid': 'annotator-row' }, [
    a.name, String(a.labels), String(a.skipped), orNa(a.median_seconds), orNa(a.labels_per_hour), String(a.gold_items), percent(a.gold_agreement), percent(a.picked_first)])));
  if (!s.annotators.length) $('annotators').tBodies[0].append(el('tr', {}, el('td', { colspan: 8, class: 'muted' }, 'no labels yet')));
  const { value, level, units } = s.alpha;
  $('alpha').textContent = `Krippendorff's alpha: ${value === null ? 'n/a' : value.toFixed(3)} (${level} metric, ${units} unit${units === 1 ? '' : 's'} with 2+ labels)`;
  $('skips').replaceChildren(...(c.skips.length ? c.skips.map((skip) => el('li', {}, el('strong', {}, skip.annotator), ` on item ${skip.item_id}: `, skip.reason))
    : [el('li', { class: 'muted' }, 'none')]));
  $('export-format').replaceChildren(...c.export_formats.map((format) => el('option', { value: format }, format)));
  exportLink();
  if (scroll) $('detail').scrollIntoView({ block: 'start' });
}

function exportLink() {
  const format = encodeURIComponent($('export-format').value);
  $('export').href = `/api/admin/campaigns/${selected}/export?format=${format}`;
}

async function setStatus(status) {
  try {
    await api('PATCH', `/api/admin/campaigns/${selected}`, { status });
  } catch (error) {
    return fail(error);
  }
  toast(`campaign ${status}`);
  return Promise.all([loadCampaigns(), showCampaign(selected)]);
}

async function createCampaign(event) {
  event.preventDefault();
  clearError();
  const form = event.currentTarget;
  const data = new FormData(form);
  const button = form.querySelector('[type=submit]');
  button.disabled = true;
  try {
    const body = {
      name: data.get('name').trim(), task_type: data.get('task_type'), k: Number(data.get('k')),
      render: data.get('render'), guidelines: data.get('guidelines'),
    };
    const lines = await data.get('source').text();
    const sampled = Number(data.get('sample_n'));
    if (sampled > 0) body.sample = { prompts_jsonl: lines, n: sampled };
    else body.source_jsonl = lines;
    const campaign = await api('POST', '/api/admin/campaigns', body);
    toast(`created ${campaign.name}: ${campaign.items} items`);
    form.reset();
    await loadCampaigns();
    await showCampaign(campaign.id, true);
  } catch (error) {
    fail(error);
  } finally {
    button.disabled = false;
  }
}

// -------------------------------------------------------------------------------- users

async function loadUsers() {
  let users;
  try {
    users = await api('GET', '/api/admin/users');
  } catch (error) {
    return fail(error, loadUsers);
  }
  $('users').tBodies[0].replaceChildren(...users.map((u) => row({ 'data-testid': `user-${u.id}` }, [
    u.name, u.role, u.active ? 'active' : 'inactive', new Date(u.created_at).toLocaleDateString(),
    el('div', { class: 'buttons' },
      el('button', { type: 'button', 'data-testid': `token-${u.id}`, onclick: () => newToken(u) }, 'New token'),
      el('button', { type: 'button', 'data-testid': `toggle-${u.id}`, onclick: () => setActive(u, !u.active) }, u.active ? 'Deactivate' : 'Activate')),
  ])));
}

function showToken(user) {
  $('token-for').textContent = `Token for ${user.name} (${user.role}):`;
  $('new-token').value = user.token;
  $('token-box').hidden = false;
  $('new-token').select();
}

async function addUser(event) {
  event.preventDefault();
  clearError();
  const form = event.currentTarget;
  const data = new FormData(form);
  try {
    showToken(await api('POST', '/api/admin/users', { name: data.get('name').trim(), role: data.get('role') }));
  } catch (error) {
    return fail(error);
  }
  form.reset();
  return loadUsers();
}

async function newToken(user) {
  clearError();
  try {
    showToken(await api('POST', `/api/admin/users/${user.id}/token`));
  } catch (error) {
    return fail(error);
  }
  return toast(`${user.name}'s old token no longer works`);
}

async function setActive(user, active) {
  clearError();
  try {
    await api('PATCH', `/api/admin/users/${user.id}`, { active });
  } catch (error) {
    return fail(error);
  }
  toast(`${user.name} ${active ? 'activated' : 'deactivated'}`);
  return loadUsers();
}

async function copyToken() {
  $('new-token').select();
  try {
    await navigator.clipboard.writeText($('new-token').value);
    toast('copied');
  } catch { // no clipboard API outside HTTPS: fall back on the selection
    toast(document.execCommand('copy') ? 'copied' : 'press Ctrl+C to copy');
  }
}

async function start() {
  let me;
  try {
    me = await session();
  } catch (error) {
    return fail(error);
  }
  if (me.role !== 'admin') {
    $('admins-only').hidden = false;
    return undefined;
  }
  $('admin').hidden = false;
  for (const button of document.querySelectorAll('[data-status]')) button.addEventListener('click', () => setStatus(button.dataset.status));
  $('export-format').addEventListener('change', exportLink);
  $('new-campaign').addEventListener('submit', createCampaign);
  $('new-user').addEventListener('submit', addUser);
  $('copy-token').addEventListener('click', copyToken);
  setInterval(() => { if (!document.hidden) loadLoops(); }, 3000); // a loop moves on its own
  return Promise.all([loadCampaigns(), loadUsers(), loadLoops()]);
}

start();
