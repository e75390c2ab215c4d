// The admin page: campaigns (progress, annotators, agreement, status, export), new
// campaigns from a JSON Lines file, and accounts with their tokens.
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
  return Promise.all([loadCampaigns(), loadUsers()]);
}

start();
