// A timer in a worker for the studio compositor: unlike page timers, not throttled when the
// lecturer looks at another tab. Post N > 0 to tick every N ms, 0 to stop.
let timer = 0;
onmessage = function (e) {
  clearInterval(timer);
  if (e.data > 0) timer = setInterval(function () { postMessage(0); }, e.data);
};
