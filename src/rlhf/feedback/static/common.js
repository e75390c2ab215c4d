// Shared by the feedback pages: the API client, DOM building without innerHTML, the alert
// area (#status, role="alert") and the toast (#toast).

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status; // 0: the request never got an answer
  }

  get retryable() {
    return this.status === 0 || this.status >= 500;
  }
}

/** One API call; resolves to the JSON answer, rejects with an ApiError carrying `detail`. */
export async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, 'The server could not be reached; check your connection.');
  }
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = typeof data?.detail === 'string' ? data.detail : null;
    throw new ApiError(response.status, detail ?? `${response.status} ${response.statusText}`);
  }
  return data;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** api(), retried with backoff on network errors and 5xx: the same body, so the same client_id. */
export async function send(method, path, body, tries = 5) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await api(method, path, body);
    } catch (error) {
      if (!(error instanceof ApiError) || !error.retryable || attempt >= tries) throw error;
      await sleep(500 * 2 ** (attempt - 1));
    }
  }
}

/** A random id for a submission (crypto.randomUUID exists only on HTTPS and localhost). */
export function uuid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

const PROPERTIES = new Set(['value', 'hidden', 'disabled', 'checked', 'selected', 'open']);

/** An element: attributes (on* = listeners), then children; strings become text nodes. */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (PROPERTIES.has(name)) node[name] = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  const kids = children.flat(Infinity).filter((c) => c !== null && c !== undefined && c !== false);
  node.append(...kids.map((c) => (c instanceof Node ? c : String(c))));
  return node;
}

/** A <div> of server-sanitised HTML: only an API `html` field may come here, nothing else. */
export function sanitised(html, attrs = {}) {
  const node = el('div', attrs);
  node.innerHTML = html;
  return node;
}

export const $ = (id) => document.getElementById(id);

export function showError(message, retry) {
  const box = $('status');
  const again = () => {
    clearError();
    retry();
  };
  box.replaceChildren(el('span', {}, message));
  if (retry) box.append(el('button', { type: 'button', 'data-testid': 'retry', onclick: again }, 'Retry'));
  box.append(el('button', { type: 'button', class: 'quiet dismiss', 'data-testid': 'dismiss', 'aria-label': 'dismiss', onclick: clearError }));
  box.hidden = false;
}

export function clearError() {
  $('status').hidden = true;
  $('status').replaceChildren();
}

/** Report a failed call: 401 goes to the login page; a retryable failure offers `retry`. */
export function fail(error, retry) {
  if (error?.status === 401) {
    location.assign('/login');
    return;
  }
  showError(error?.message ?? String(error), error?.retryable ? retry : undefined);
}

let toastTimer;
export function toast(message) {
  const box = $('toast');
  box.textContent = message;
  box.hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => {
    box.hidden = true;
  }, 1800);
}

/** Who is logged in (rejects with 401 if nobody): fills the header and wires "log out". */
export async function session() {
  const me = await api('GET', '/api/me');
  $('me').replaceChildren(me.name, el('span', { class: 'role-label' }, ` · ${me.role}`));
  $('logout').addEventListener('click', async () => {
    await api('POST', '/api/logout').catch(() => null);
    location.assign('/login');
  });
  return me;
}
