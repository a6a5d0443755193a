/// The dashboard's style sheet and script, inlined into every page: no build step, no files.
enum DashboardAssets {
    static let style = """
        :root { --fg:#1f2937; --muted:#6b7280; --line:#e5e7eb; --bg:#f9fafb; --accent:#2563eb;
          --waiting:#e5e7eb; --queued:#dbeafe; --running:#fde68a; --retrying:#fdba74; --succeeded:#bbf7d0;
          --failed:#fecaca; --skipped:#f3f4f6; --cancelled:#d1d5db; }
        * { box-sizing: border-box; }
        body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif; color:var(--fg); background:var(--bg); }
        header { display:flex; gap:18px; align-items:baseline; padding:10px 22px; background:#111827; color:#f9fafb; }
        header a { color:#f9fafb; text-decoration:none; } header .brand { font-weight:700; font-size:16px; }
        header .leader { margin-left:auto; color:#9ca3af; font-size:12px; }
        main { padding:18px 22px; max-width:1400px; }
        h1 { font-size:20px; margin:4px 0 6px; } h2 { font-size:15px; margin:22px 0 8px; }
        a { color:var(--accent); }
        table { border-collapse:collapse; width:100%; background:#fff; border:1px solid var(--line); }
        th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
        th { font-size:12px; color:var(--muted); font-weight:600; background:#f3f4f6; }
        td.num, th.num { text-align:right; font-variant-numeric:tabular-nums; }
        code, .mono { font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12px; }
        .muted { color:var(--muted); } .error { color:#b91c1c; }
        .badge { display:inline-block; padding:1px 8px; border-radius:10px; font-size:12px; font-weight:600; background:var(--waiting); }
        [data-state=queued] > .badge, .badge[data-state=queued] { background:var(--queued); }
        .badge[data-state=running] { background:var(--running); } .badge[data-state=retrying] { background:var(--retrying); }
        .badge[data-state=succeeded] { background:var(--succeeded); } .badge[data-state=failed] { background:var(--failed); }
        .badge[data-state=skipped] { background:var(--skipped); } .badge[data-state=cancelled] { background:var(--cancelled); }
        .meta { color:var(--muted); display:flex; gap:16px; flex-wrap:wrap; }
        .progress { height:8px; background:var(--line); border-radius:4px; overflow:hidden; min-width:120px; }
        .progress > div { height:100%; background:#16a34a; }
        .dag { background:#fff; border:1px solid var(--line); overflow:auto; margin-top:12px; }
        .node rect.box { fill:var(--waiting); stroke:#9ca3af; stroke-width:1; }
        .node[data-state=queued] rect.box { fill:var(--queued); stroke:#60a5fa; }
        .node[data-state=running] rect.box { fill:var(--running); stroke:#d97706; }
        .node[data-state=retrying] rect.box { fill:var(--retrying); stroke:#ea580c; }
        .node[data-state=succeeded] rect.box { fill:var(--succeeded); stroke:#16a34a; }
        .node[data-state=failed] rect.box { fill:var(--failed); stroke:#dc2626; }
        .node[data-state=skipped] rect.box { fill:var(--skipped); stroke-dasharray:4 3; }
        .node[data-state=cancelled] rect.box { fill:var(--cancelled); }
        .node text { font-size:12px; fill:#111827; } .node .name { font-weight:700; font-size:13px; }
        .node .task, .node .summary { fill:#374151; } .node rect.track { fill:#ffffff; opacity:.7; } .node rect.bar { fill:#15803d; }
        .edge { fill:none; stroke:#9ca3af; stroke-width:1.5; }
        .legend { display:flex; gap:10px; margin-top:8px; font-size:12px; }
        ol.events { list-style:none; padding:0; margin:0; max-height:320px; overflow:auto; background:#fff; border:1px solid var(--line); }
        ol.events li { padding:3px 10px; border-bottom:1px solid var(--line); font-family:ui-monospace,"DejaVu Sans Mono",monospace; font-size:12px; }
        .live { font-size:12px; color:var(--muted); } .live[data-live=on]::before { content:"● "; color:#16a34a; }
        .grid { display:grid; grid-template-columns:repeat(auto-fit,minmax(420px,1fr)); gap:0 24px; }
        """

    /// Applies the run JSON of the `update` server-sent events to the server-rendered page.
    static let runScript = """
        (function () {
          const page = document.getElementById('run');
          if (!page || !window.EventSource) return;
          const runID = page.dataset.run;
          const live = document.getElementById('live');
          let lastEvent = page.dataset.lastEvent || '0';
          function text(el, value) { if (el) el.textContent = value; }
          // Event ids: `ms-seq` (a stream entry), or `ms-seq.i` for event i of an entry holding
          // several, which comes before the entry's last event (the plain `ms-seq`).
          function position(id) {
            const [ms, rest] = id.split('-');
            const [seq, sub] = (rest || '0').split('.');
            return [Number(ms), Number(seq), sub === undefined ? Infinity : Number(sub)];
          }
          function newer(a, b) {
            const x = position(a), y = position(b);
            for (let i = 0; i < 3; i++) if (x[i] !== y[i]) return x[i] > y[i];
            return false;
          }
          function apply(v) {
            const state = document.getElementById('run-state');
            state.dataset.state = v.state; text(state, v.state);
            document.getElementById('run-bar').style.width = (v.progress * 100).toFixed(1) + '%';
            text(document.getElementById('run-done'), v.done + '/' + v.total + ' stages');
            text(document.getElementById('run-elapsed'), v.elapsed);
            text(document.getElementById('run-reason'), v.reason || '');
            for (const s of v.stages) {
              const sel = '[data-stage="' + CSS.escape(s.name) + '"]';
              const node = document.querySelector('g.node' + sel);
              if (node) {
                node.dataset.state = s.state;
                text(node.querySelector('.state'), s.state);
                text(node.querySelector('.summary'), s.summary);
                const bar = node.querySelector('rect.bar');
                if (bar) bar.setAttribute('width', (Number(bar.dataset.full) * s.progress).toFixed(1));
              }
              const row = document.querySelector('tr' + sel);
              if (row) {
                row.dataset.state = s.state;
                const badge = row.querySelector('.badge'); badge.dataset.state = s.state; text(badge, s.state);
                text(row.querySelector('.attempt'), s.attempt || '');
                text(row.querySelector('.elements'), s.elements === null ? '' : s.elementsDone + '/' + s.elements);
                text(row.querySelector('.wait'), s.wait || '');
                text(row.querySelector('.runtime'), s.runTime || '');
                text(row.querySelector('.error'), s.error ? s.error + (s.deadLettered ? ' (dead-lettered)' : '') : '');
              }
            }
            const list = document.getElementById('events');
            for (const e of v.events) {
              if (!newer(e.id, lastEvent)) continue;
              const li = document.createElement('li');
              li.dataset.event = e.id;
              li.textContent = new Date(e.t).toISOString().substring(11, 23) + '  ' + e.text;
              list.insertBefore(li, list.firstChild);
              lastEvent = e.id;
            }
            while (list.children.length > 300) list.removeChild(list.lastChild);
            page.dataset.lastEvent = lastEvent;
          }
          function connect() {
            const source = new EventSource('/runs/' + runID + '/stream?after=' + encodeURIComponent(lastEvent));
            source.addEventListener('open', () => { live.dataset.live = 'on'; text(live, 'live'); });
            source.addEventListener('update', (m) => apply(JSON.parse(m.data)));
            source.addEventListener('end', () => { source.close(); live.dataset.live = 'off'; text(live, 'run ended'); });
            source.addEventListener('error', () => { live.dataset.live = 'off'; text(live, 'reconnecting…'); });
          }
          connect();
        })();
        """

    /// Refreshes the overview's tables every few seconds.
    static let overviewScript = """
        (function () {
          const main = document.getElementById('overview');
          if (!main) return;
          setInterval(async () => {
            try {
              const reply = await fetch('/?fragment=1', { cache: 'no-store' });
              if (reply.ok) main.innerHTML = await reply.text();
            } catch (e) { /* the next refresh tries again */ }
          }, 3000);
        })();
        """
}
