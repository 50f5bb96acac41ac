// The demo dashboard's service worker, served at /sw.js (scope /). It keeps the dashboard (`/`,
// whatever its `?user=`) and the client library (`/client/*`) so the page reloads while the server
// is down. Network first, so fresh code is used whenever the server answers; the cache only when it
// does not. Nothing else is touched: /v1/sync, /demo/token, /metrics and the rest go to the network
// as if there were no worker.
'use strict';

// Bump the version when the caching rules change; activate drops the older caches.
const VERSION = 'v1';
const PREFIX = 'syncline-dashboard-';
const CACHE = PREFIX + VERSION;
const PRECACHE = ['/', '/client/syncline.js'];
// Past this, a network that neither answers nor fails gives way to the cached copy (if any).
const NETWORK_TIMEOUT_MS = 4000;

/** The cache key for a request this worker handles, or null for requests it leaves alone. */
function cacheKey(request) {
  if (request.method !== 'GET') return null;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin) return null;
  if (url.pathname === '/') return '/';                        // `/?user=bob` is the same page
  if (url.pathname.startsWith('/client/')) return url.pathname; // the query string never changes the file
  return null;
}

self.addEventListener('install', event => {
  // The first load fetched the page and the library before this worker existed: fetch them once
  // more so that the very next reload works offline. A missing file does not fail the install.
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    await Promise.all(PRECACHE.map(async path => {
      try {
        const response = await fetch(path, {cache: 'no-cache'});
        if (response.ok) await cache.put(path, response);
      } catch { /* offline while installing: the fetch handler fills the cache later */ }
    }));
    await self.skipWaiting();
  })());
});

self.addEventListener('activate', event => {
  event.waitUntil((async () => {
    const names = await caches.keys();
    await Promise.all(names.filter(n => n.startsWith(PREFIX) && n !== CACHE).map(n => caches.delete(n)));
    await self.clients.claim();
  })());
});

self.addEventListener('fetch', event => {
  const key = cacheKey(event.request);
  if (key === null) return;
  event.respondWith(networkFirst(event.request, key));
});

async function networkFirst(request, key) {
  const cache = await caches.open(CACHE);
  const cached = await cache.match(key);
  const network = fetch(request).then(async response => {
    // Only complete, same-origin answers are kept (never an error page over a good copy).
    if (response.ok && response.type === 'basic' && response.status === 200) await cache.put(key, response.clone());
    return response;
  });
  if (!cached) return network;   // nothing to fall back to: the network's answer or error, as is
  network.catch(() => {});       // a late failure after the timeout below is not an error
  let timer;
  const timeout = new Promise(resolve => { timer = setTimeout(() => resolve(null), NETWORK_TIMEOUT_MS); });
  try {
    const response = await Promise.race([network, timeout]);
    if (response && response.status < 500) return response;
    return cached;
  } catch {
    return cached;
  } finally {
    clearTimeout(timer);
  }
}
