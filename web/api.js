// The only way the page talks to arcd: the public /v1 API, with the same headers a script sends.
// The API key and token live in sessionStorage (gone when the tab closes; sign-out clears them).

const STORAGE_KEY = 'arcd.session';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Called when the API says the token is no longer valid (expired or revoked).
let onExpired = () => {};
export function setExpiredHandler(handler) {
  onExpired = handler;
}

export function session() {
  try {
    return JSON.parse(sessionStorage.getItem(STORAGE_KEY) || 'null');
  } catch {
    return null;
  }
}

export function clearSession() {
  sessionStorage.removeItem(STORAGE_KEY);
}

export async function signIn(authKeyId, authKey) {
  const { body } = await request('POST', '/v1/auth', { authKeyId, authKey }, { anonymous: true });
  const saved = { apiKey: body.apiKey, token: body.token, operatorId: body.operatorId };
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(saved));
  return saved;
}

// request(method, path, body?) → { status, headers, body }. Throws ApiError with the API's own
// message for any non-2xx answer, and a readable one when arcd cannot be reached.
export async function request(method, path, body, { anonymous = false } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const current = session();
  if (!anonymous) {
    if (!current) {
      onExpired('Please sign in.');
      throw new ApiError(401, 'SIGNED_OUT', 'not signed in');
    }
    headers['X-Soracom-API-Key'] = current.apiKey;
    headers['X-Soracom-Token'] = current.token;
  }
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
  } catch (err) {
    throw new ApiError(0, 'NETWORK', `arcd did not answer (${err.message})`);
  }
  const text = await response.text();
  let parsed = null;
  if (text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  if (!response.ok) {
    const message = (parsed && parsed.message) || `HTTP ${response.status}`;
    const code = (parsed && parsed.code) || String(response.status);
    if (response.status === 401 && !anonymous) {
      clearSession();
      onExpired('Your session has expired or was revoked: please sign in again.');
    }
    throw new ApiError(response.status, code, message);
  }
  return { status: response.status, headers: response.headers, body: parsed };
}

export const get = (path) => request('GET', path).then((r) => r.body);
export const post = (path, body) => request('POST', path, body).then((r) => r.body);
export const put = (path, body) => request('PUT', path, body).then((r) => r.body);
export const del = (path) => request('DELETE', path).then((r) => r.body);

// One page of a listing: items plus the key of the next page (X-Soracom-Next-Key), if any.
export async function page(path) {
  const { headers, body } = await request('GET', path);
  return { items: body || [], nextKey: headers.get('x-soracom-next-key') };
}

// Every item of a short listing (groups, VPGs), following the next-page key; at most `max`.
export async function all(path, max = 5000) {
  const items = [];
  let key = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const next = await page(`${path}${sep}limit=1000${key ? `&last_evaluated_key=${enc(key)}` : ''}`);
    items.push(...next.items);
    key = next.nextKey;
  } while (key && items.length < max);
  return items;
}

export const enc = encodeURIComponent;
