// The annotator's page: choose a campaign (#c=ID), label its items one by one, see history.
import { $, api, clearError, el, fail, sanitised, send, session, showError, toast, uuid } from './common.js';

const PAIRWISE = [
  'A much better', 'A better', 'A slightly better', 'A negligibly better',
  'B negligibly better', 'B slightly better', 'B better', 'B much better',
];
const RATINGS = ['very poor', 'poor', 'okay', 'good', 'excellent'];
const LETTERS = 'abcdefghi'; // rank tasks show at most 9 responses
// PRM800K's step ratings (rlhf.feedback.tasks.STEP_LABELS): the value sent, its keys, its mark in the history
const STEP_LABELS = [
  { value: 1, name: 'correct', keys: ['1', '+'], mark: '+' },
  { value: -1, name: 'incorrect', keys: ['2', '-'], mark: '−' },
  { value: 0, name: 'neutral', keys: ['3', '0'], mark: '0' },
];

let campaigns = [];
// The item on screen: its assignment, the client_id of its label (one per item view, reused
// on retry), its keyboard shortcuts, and whether a request is in flight.
let view = { campaignId: null, assignment: null, clientId: null, keys: {}, busy: false };

const progressText = (p) => `done ${p.done} · remaining ${p.remaining}`;

/** Model or prompt text: escaped plain text keeps its line breaks; markdown HTML flows. */
const textBlock = (html) => sanitised(html, { class: html.includes('<') ? 'text md' : 'text' });

function campaignFromHash() {
  const match = /^#c=(\d+)$/.exec(location.hash);
  return match ? Number(match[1]) : null;
}

async function route() {
  clearError();
  const id = campaignFromHash();
  $('chooser').hidden = id !== null;
  $('work').hidden = id === null;
  $('history-panel').hidden = id === null;
  view = { campaignId: id, assignment: null, clientId: null, keys: {}, busy: false };
  showLoading();
  $('history').replaceChildren();
  await loadCampaigns();
  if (id !== null) await Promise.all([loadNext(id), loadHistory(id)]);
}

async function loadCampaigns() {
  try {
    campaigns = await api('GET', '/api/campaigns');
  } catch (error) {
    return fail(error, loadCampaigns);
  }
  $('no-campaigns').hidden = campaigns.length > 0;
  $('campaign-list').replaceChildren(...campaigns.map((c) => el('li', {},
    el('button', { type: 'button', class: 'campaign', 'data-testid': `campaign-${c.id}`, onclick: () => { location.hash = `c=${c.id}`; } },
      el('strong', {}, c.name), el('span', { class: 'pill' }, c.task_type),
      el('span', { class: 'muted' }, progressText(c.progress))))));
}

async function loadNext(id) {
  let data;
  try {
    data = await api('GET', `/api/campaigns/${id}/next`);
  } catch (error) {
    if (error.status === 404 || error.status === 409) { // gone, paused or closed: back to the list
      history.replaceState(null, '', location.pathname);
      await route();
    }
    return fail(error, () => loadNext(id));
  }
  if (campaignFromHash() !== id) return;
  const a = data.assignment;
  if (!a) await loadCampaigns(); // fresh progress for the "all done" view
  const meta = campaigns.find((c) => c.id === id);
  $('campaign-name').textContent = a?.campaign ?? meta?.name ?? `campaign ${id}`;
  $('guidelines-text').textContent = a?.guidelines ?? meta?.guidelines ?? '';
  $('guidelines').hidden = !$('guidelines-text').textContent.trim();
  const progress = a?.progress ?? meta?.progress;
  $('progress').textContent = progress ? progressText(progress) : '';
  view = { campaignId: id, assignment: a, clientId: uuid(), keys: {}, busy: false };
  if (!a) {
    $('item').replaceChildren(el('p', { class: 'done', 'data-testid': 'done-message' }, data.message));
    $('help').textContent = '';
    return;
  }
  const task = TASKS[a.task_type](a);
  const skip = skipControls(a);
  view.keys = task.keys;
  view.keys.s = skip.open;
  $('item').replaceChildren(...[promptView(a.prompt), task.node, skip.node].flat().filter(Boolean));
  $('help').textContent = `Keys: ${task.help} · s skip · ? show/hide this line`;
}

function promptView(messages) {
  if (!messages.length) return null;
  return el('section', { class: 'prompt', 'data-testid': 'prompt', 'aria-label': 'prompt' },
    messages.map((m) => el('div', { class: `msg ${m.role}` }, el('span', { class: 'role' }, m.role), textBlock(m.html))));
}

const responseCard = (response, testid, title, ...extra) => el('article', { class: 'response', 'data-testid': testid },
  el('h3', {}, title), textBlock(response.html), ...extra);

/** POST with retries; on failure shows why (with a retry button) and resolves to undefined. */
async function post(path, body, retry) {
  view.busy = true;
  clearError();
  try {
    return await send('POST', path, body);
  } catch (error) {
    if (error.status === 409) { // expired, already labelled, ...: the server's state wins
      showError(error.message);
      loadNext(view.campaignId);
    } else {
      fail(error, retry);
    }
    return undefined;
  } finally {
    view.busy = false;
  }
}

/** The item area while the next item loads (no stale controls to press meanwhile). */
function showLoading() {
  $('item').replaceChildren(el('p', { class: 'muted' }, 'loading…'));
  $('help').textContent = '';
}

function saved(message = 'saved') {
  toast(message);
  view.keys = {};
  view.busy = true; // until the next item replaces this one
  showLoading();
  loadNext(view.campaignId);
  loadHistory(view.campaignId);
}

async function submit(value) {
  if (view.busy) return;
  const ack = await post(`/api/assignments/${view.assignment.id}/label`, { client_id: view.clientId, ...value }, () => submit(value));
  if (ack) saved();
}

function buttonScale(labels, testid, onChoose, extraClass = () => '') {
  const keys = {};
  const buttons = labels.map((label, i) => {
    const choose = () => onChoose(i + 1);
    keys[String(i + 1)] = choose;
    return el('button', { type: 'button', class: `choice ${extraClass(i)}`, 'data-testid': `${testid}-${i + 1}`, onclick: choose },
      el('kbd', {}, String(i + 1)), el('span', {}, label));
  });
  return { buttons, keys };
}

const TASKS = {
  pairwise(a) {
    const { buttons, keys } = buttonScale(PAIRWISE, 'choice', (choice) => submit({ choice }), (i) => (i < 4 ? 'side-a' : 'side-b'));
    return {
      node: [
        el('div', { class: 'pair' }, responseCard(a.responses[0], 'response-0', 'Response A'), responseCard(a.responses[1], 'response-1', 'Response B')),
        el('div', { class: 'scale eight', role: 'group', 'aria-label': 'Which response is better?' }, buttons),
      ],
      keys,
      help: '1–4 A is better (1 = much) · 5–8 B is better (8 = much)',
    };
  },

  rank(a) {
    const k = a.responses.length;
    const ranks = new Array(k).fill(null);
    let selected = 0;
    const cards = a.responses.map((response, i) => responseCard(response, `response-${i}`, `Response ${LETTERS[i].toUpperCase()}`,
      el('div', { class: 'rank-row', role: 'group', 'aria-label': `rank of response ${LETTERS[i].toUpperCase()}` },
        el('span', { class: 'muted' }, 'rank'),
        Array.from({ length: k }, (_, r) => el('button', {
          type: 'button', class: 'rank', 'data-testid': `rank-${i}-${r + 1}`, 'aria-pressed': 'false', onclick: () => setRank(i, r + 1),
        }, String(r + 1))))));
    const refresh = () => cards.forEach((card, i) => {
      card.classList.toggle('selected', i === selected);
      card.querySelectorAll('.rank').forEach((b, r) => b.setAttribute('aria-pressed', String(ranks[i] === r + 1)));
    });
    const select = (i) => {
      selected = i;
      refresh();
      cards[i].scrollIntoView({ block: 'nearest' });
    };
    function setRank(i, rank) {
      ranks[i] = rank;
      select(Math.min(i + 1, k - 1)); // digits typed in a row rank the responses in order
    }
    function go() {
      if (ranks.includes(null)) return showError('Give every response a rank (1 = best).');
      if (new Set(ranks).size === 1) return showError('All responses tied says nothing: rank at least two apart.');
      return submit({ ranks });
    }
    const keys = { Enter: go };
    for (let i = 0; i < k; i++) {
      keys[LETTERS[i]] = () => select(i);
      keys[String(i + 1)] = () => setRank(selected, i + 1);
    }
    refresh();
    return {
      node: [el('div', { class: 'ranked' }, cards), el('button', { type: 'button', class: 'primary', 'data-testid': 'submit', onclick: go }, 'Submit ranking')],
      keys,
      help: `a–${LETTERS[k - 1]} select a response · 1–${k} give it that rank (1 = best, ties allowed) and go to the next · Enter submit`,
    };
  },

  rate(a) {
    const { buttons, keys } = buttonScale(RATINGS, 'rating', (rating) => submit({ rating }));
    return {
      node: [responseCard(a.responses[0], 'response-0', 'Response'), el('div', { class: 'scale five', role: 'group', 'aria-label': 'Rating' }, buttons)],
      keys,
      help: '1–5 rate (1 = very poor, 5 = excellent)',
    };
  },

  thumbs(a) {
    const up = () => submit({ up: true });
    const down = () => submit({ up: false });
    return {
      node: [
        responseCard(a.responses[0], 'response-0', 'Response'),
        el('div', { class: 'scale two', role: 'group', 'aria-label': 'Is this response good?' },
          el('button', { type: 'button', class: 'choice', 'data-testid': 'thumbs-up', onclick: up }, el('span', { 'aria-hidden': 'true' }, '👍'), el('span', {}, 'Good (u)')),
          el('button', { type: 'button', class: 'choice', 'data-testid': 'thumbs-down', onclick: down }, el('span', { 'aria-hidden': 'true' }, '👎'), el('span', {}, 'Bad (d)'))),
      ],
      keys: { u: up, '+': up, d: down, '-': down },
      help: 'u or + good · d or - bad',
    };
  },

  edit(a) {
    const box = el('textarea', { class: 'edit', rows: 12, 'data-testid': 'edit-text' });
    box.value = a.responses[0].text;
    const go = () => (box.value.trim() ? submit({ text: box.value }) : showError('The edited response is empty.'));
    box.addEventListener('keydown', (event) => {
      if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        go();
      }
    });
    return {
      node: [
        el('label', { class: 'block' }, 'Improve the response, then submit it (unchanged is fine if it needs nothing).', box),
        el('button', { type: 'button', class: 'primary', 'data-testid': 'submit', onclick: go }, 'Submit edit'),
      ],
      keys: { e: () => box.focus() },
      help: 'e edit the text · Ctrl+Enter (⌘+Enter) submit · Esc leave the text box',
    };
  },

  chat: chatTask,
  steps: stepsTask,
};

/** Each step of a solution judged correct, incorrect or neutral; as PRM800K's labellers may, the
 * annotator can stop at the first incorrect step (the steps after it may stay unlabelled). */
function stepsTask(a) {
  const n = a.responses.length;
  const labels = new Array(n).fill(null);
  let selected = 0;
  const firstIncorrect = () => (labels.includes(-1) ? labels.indexOf(-1) : n);
  const rows = a.responses.map((step, i) => el('li', { class: 'step', 'data-testid': `step-${i}` },
    el('h3', {}, `Step ${i + 1}`),
    textBlock(step.html),
    el('div', { class: 'step-labels', role: 'group', 'aria-label': `Step ${i + 1}: correct, incorrect or neutral?` },
      STEP_LABELS.map((choice) => el('button', {
        type: 'button', class: `step-label ${choice.name}`, 'data-testid': `step-${i}-${choice.name}`, 'aria-pressed': 'false',
        onclick: () => setLabel(i, choice.value),
      }, el('kbd', {}, choice.keys[0]), el('span', {}, choice.name[0].toUpperCase() + choice.name.slice(1)))))));
  rows.forEach((row, i) => row.querySelector('.text').addEventListener('click', () => select(i)));
  const tally = el('p', { class: 'muted', 'aria-live': 'polite', 'data-testid': 'step-tally' });

  function refresh() {
    const first = firstIncorrect();
    rows.forEach((row, i) => {
      row.classList.toggle('selected', i === selected);
      if (i === selected) row.setAttribute('aria-current', 'step');
      else row.removeAttribute('aria-current');
      row.classList.toggle('optional', i > first && labels[i] === null);
      row.querySelectorAll('.step-label').forEach((button, c) => button.setAttribute('aria-pressed', String(labels[i] === STEP_LABELS[c].value)));
    });
    const done = labels.filter((label) => label !== null).length;
    tally.textContent = `${done} of ${n} steps labelled${first < n ? ` · step ${first + 1} is incorrect: the steps after it may stay unlabelled` : ''}`;
  }
  function select(i) {
    selected = Math.max(0, Math.min(i, n - 1));
    refresh();
    rows[selected].scrollIntoView({ block: 'nearest' });
  }
  function setLabel(i, value) {
    labels[i] = value;
    select(i + 1); // keys pressed in a row label the steps in order
  }
  function go() {
    const missing = labels.findIndex((label, i) => label === null && i < firstIncorrect());
    if (missing !== -1) {
      select(missing);
      return showError(`Label step ${missing + 1}: every step up to the first incorrect one needs a label.`);
    }
    return submit({ labels });
  }

  const keys = { Enter: go, ArrowDown: () => select(selected + 1), j: () => select(selected + 1), ArrowUp: () => select(selected - 1), k: () => select(selected - 1) };
  for (const choice of STEP_LABELS) for (const key of choice.keys) keys[key] = () => setLabel(selected, choice.value);
  refresh();
  return {
    node: [
      a.answer ? el('p', { class: 'answer', 'data-testid': 'answer' }, el('strong', {}, 'Known answer: '), a.answer) : null,
      el('ol', { class: 'steps', 'data-testid': 'steps', 'aria-label': 'the solution, step by step' }, rows),
      tally,
      el('button', { type: 'button', class: 'primary', 'data-testid': 'submit', onclick: go }, 'Submit labels'),
    ],
    keys,
    help: '↑ / ↓ or k / j select a step · 1 or + correct · 2 or - incorrect · 3 or 0 neutral (each labels the step and goes to the next) · '
      + 'Enter submit (after the first incorrect step the rest may stay unlabelled)',
  };
}

function chatTask(a) {
  const keys = {};
  const root = el('div', { class: 'chat' });
  let messageId = uuid(); // client_id of the message being written, reused on retry
  const pickIds = {}; // client_id of each turn's pick
  const box = el('textarea', { rows: 3, 'data-testid': 'chat-message', 'aria-label': 'your message', placeholder: 'Your message' });
  box.value = a.turns.length ? '' : a.opening ?? '';
  const sendButton = el('button', { type: 'button', class: 'primary', 'data-testid': 'chat-send', onclick: sendMessage }, 'Send');
  const finishButton = el('button', { type: 'button', 'data-testid': 'chat-finish', onclick: finish }, 'Finish conversation');
  const writing = el('p', { class: 'muted', 'data-testid': 'generating', hidden: true }, 'the model is writing…');
  const composer = el('div', { class: 'composer' }, box, el('div', { class: 'buttons' }, sendButton, finishButton), writing);
  box.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.ctrlKey && !event.metaKey && !event.isComposing) {
      event.preventDefault();
      sendMessage();
    }
  });

  function turnView(turn, deciding) {
    const nodes = [el('div', { class: 'msg user' }, el('span', { class: 'role' }, 'you'), textBlock(turn.message.html))];
    if (turn.chosen !== null) {
      const other = turn.candidates[1 - turn.chosen];
      nodes.push(el('div', { class: 'msg assistant' }, el('span', { class: 'role' }, 'assistant'), textBlock(turn.candidates[turn.chosen].html)),
        el('details', { class: 'rejected' }, el('summary', {}, 'the other reply'), textBlock(other.html)));
    } else if (deciding) {
      nodes.push(el('p', { class: 'ask' }, 'Which reply is better?'), el('div', { class: 'pair' }, turn.candidates.map((c, i) => responseCard(c, `candidate-${i}`, `Reply ${i + 1}`,
        el('button', { type: 'button', class: 'choice', 'data-testid': `pick-${i}`, onclick: () => pick(turn, i) }, el('kbd', {}, String(i + 1)), el('span', {}, 'This one is better'))))));
    }
    return nodes;
  }

  function draw() {
    const last = a.turns[a.turns.length - 1];
    const deciding = last !== undefined && last.chosen === null;
    root.replaceChildren(...a.turns.flatMap((turn) => turnView(turn, turn === last)));
    if (!deciding) root.append(composer);
    finishButton.disabled = !a.turns.some((turn) => turn.chosen !== null);
    keys['1'] = deciding ? () => pick(last, 0) : undefined;
    keys['2'] = deciding ? () => pick(last, 1) : undefined;
  }

  async function sendMessage() {
    if (view.busy) return;
    writing.hidden = false;
    box.disabled = sendButton.disabled = true;
    const answer = await post(`/api/assignments/${a.id}/chat`, { client_id: messageId, message: box.value }, sendMessage);
    writing.hidden = true;
    box.disabled = sendButton.disabled = false;
    if (!answer) return;
    a.turns.push(answer.turn);
    messageId = uuid();
    box.value = '';
    draw();
  }

  async function pick(turn, choice) {
    if (view.busy) return;
    pickIds[turn.index] = pickIds[turn.index] ?? uuid();
    const body = { client_id: pickIds[turn.index], turn: turn.index, choice };
    const ack = await post(`/api/assignments/${a.id}/choose`, body, () => pick(turn, choice));
    if (!ack) return;
    toast('saved');
    loadHistory(view.campaignId);
    if (ack.duplicate) return loadNext(view.campaignId); // an earlier try counted: show the server's state
    turn.chosen = choice;
    draw();
    return box.focus();
  }

  async function finish() {
    if (!view.busy && (await post(`/api/assignments/${a.id}/finish`, undefined, finish))) saved();
  }

  draw();
  return { node: root, keys, help: 'Enter send · Shift+Enter new line · 1 / 2 pick the better reply · Esc leave the text box' };
}

function skipControls(a) {
  const reason = el('input', {
    type: 'text', required: true, maxlength: 500, 'data-testid': 'skip-reason', 'aria-label': 'why do you skip this item?',
    placeholder: 'why skip? e.g. the prompt is unreadable',
  });
  const close = () => { form.hidden = true; };
  const open = () => {
    form.hidden = false;
    reason.focus();
  };
  async function confirm(event) {
    event?.preventDefault();
    if (!view.busy && (await post(`/api/assignments/${a.id}/skip`, { reason: reason.value }, confirm))) saved('skipped');
  }
  reason.addEventListener('keydown', (event) => { if (event.key === 'Escape') close(); });
  const form = el('form', { class: 'skip-form', hidden: true, onsubmit: confirm }, reason,
    el('button', { type: 'submit', 'data-testid': 'skip-confirm' }, 'Skip this item'),
    el('button', { type: 'button', onclick: close }, 'Cancel'));
  return { open, node: el('div', { class: 'skip' }, el('button', { type: 'button', class: 'quiet', 'data-testid': 'skip', onclick: open }, 'Skip…'), form) };
}

// ------------------------------------------------------------------------------- history

function excerpt(prompt) {
  let text = prompt;
  if (Array.isArray(prompt)) text = ([...prompt].reverse().find((m) => m.role === 'user') ?? prompt[0])?.content ?? '';
  const flat = text.replace(/\s+/g, ' ').trim();
  if (!flat) return '(a conversation you opened)';
  return flat.length > 80 ? `${flat.slice(0, 79)}…` : flat;
}

function describe({ value, turn, task_type: task }) {
  if (task === 'chat') return `turn ${turn + 1}: reply ${value.choice + 1} picked`;
  if (task === 'steps') return `steps ${value.labels.map((label) => STEP_LABELS.find((c) => c.value === label)?.mark ?? '·').join(' ')}`;
  if ('choice' in value) return `${value.choice}: ${PAIRWISE[value.choice - 1]}`;
  if ('ranks' in value) return `ranks ${value.ranks.join(',')}`;
  if ('rating' in value) return `rating ${value.rating}`;
  if ('up' in value) return value.up ? '👍' : '👎';
  if ('text' in value) return 'edited';
  return JSON.stringify(value);
}

async function loadHistory(id) {
  let rows;
  try {
    rows = await api('GET', `/api/me/labels?campaign_id=${id}`);
  } catch (error) {
    return fail(error, () => loadHistory(id));
  }
  if (campaignFromHash() !== id) return;
  $('history-empty').hidden = rows.length > 0;
  $('history').replaceChildren(...rows.map((row) => el('li', { 'data-testid': 'history-row' },
    el('strong', {}, describe(row)), el('span', { class: 'excerpt' }, excerpt(row.prompt)),
    el('time', { datetime: row.created_at, class: 'muted' }, new Date(row.created_at).toLocaleString()))));
}

// ------------------------------------------------------------------------------ keyboard

document.addEventListener('keydown', (event) => {
  if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) return;
  const target = event.target;
  if (target.closest('input, textarea, select, [contenteditable]')) {
    if (event.key === 'Escape') target.blur();
    return; // typing: no shortcuts (the text boxes handle their own Enter)
  }
  if (event.key === '?') {
    $('help').hidden = !$('help').hidden;
    return;
  }
  // Enter on a focused control activates it, except on rank and step buttons, where it submits
  if (event.key === 'Enter' && target.closest('button, a, summary') && !target.closest('.rank-row, .step-labels')) return;
  const action = $('work').hidden ? undefined : view.keys[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
});

session().then(() => {
  window.addEventListener('hashchange', route);
  return route();
}, (error) => fail(error));
