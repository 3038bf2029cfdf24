"""The report page's stylesheet, inlined in its <head>: screen and print (A4, colours kept)."""

CSS = """
:root { --ink:#1f2933; --muted:#52606d; --rule:#cbd2d9; --soft:#f5f7fa; --ok:#1b7f3b;
        --bad:#b42318; --warn:#8a5a00; --accent:#0b4f8a; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { font: 14px/1.45 "DejaVu Sans", "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       margin: 0 auto; max-width: 1060px; padding: 28px 32px 48px; background: #fff; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 30px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--accent);
     color: var(--accent); break-after: avoid; }
h3 { font-size: 15px; margin: 18px 0 6px; break-after: avoid; }
p { margin: 6px 0; }
.sub { color: var(--muted); margin: 0 0 14px; }
.facts { display: grid; grid-template-columns: repeat(3, 1fr); gap: 6px 18px; padding: 12px 14px;
         background: var(--soft); border: 1px solid var(--rule); border-radius: 6px; }
.facts div { min-width: 0; overflow-wrap: anywhere; }
.facts b { display: block; font-size: 11px; text-transform: uppercase; letter-spacing: .04em;
           color: var(--muted); font-weight: 600; }
.summary { margin: 14px 0; padding: 12px 14px; border-left: 5px solid var(--accent);
           background: #eef4fb; }
.summary.alert { border-left-color: var(--bad); background: #fdf0ef; }
.summary ul { margin: 6px 0 0 18px; padding: 0; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
         font-weight: 600; border: 1px solid currentColor; white-space: nowrap; }
.ok { color: var(--ok); } .bad { color: var(--bad); } .warn { color: var(--warn); }
.muted { color: var(--muted); }
.judged { break-after: avoid; }
table { border-collapse: collapse; width: 100%; margin: 6px 0 10px; font-size: 12.5px; }
th, td { border: 1px solid var(--rule); padding: 4px 7px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
tr { break-inside: avoid; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 11.5px; }
.digest { font-family: "DejaVu Sans Mono", Menlo, monospace; font-size: 11px; overflow-wrap: anywhere; }
table.matrix { width: auto; min-width: 50%; }
table.matrix td { text-align: center; min-width: 92px; font-variant-numeric: tabular-nums; }
table.matrix td.trained { outline: 3px solid #e4572e; outline-offset: -3px; font-weight: 700; }
table.matrix td.na { background: repeating-linear-gradient(45deg, #eee, #eee 4px, #ddd 4px, #ddd 8px);
                     color: #555; }
.legend { display: flex; align-items: center; gap: 8px; font-size: 12px; color: var(--muted); }
.legend .ramp { width: 160px; height: 12px; border: 1px solid var(--rule); }
figure { margin: 12px 0; break-inside: avoid; }
figure svg { width: 100%; max-width: 760px; height: auto; display: block; }
figcaption { font-size: 12px; color: var(--muted); margin-top: 2px; }
svg .ct { font: 600 13px sans-serif; fill: #1f2933; }
svg .ca { font: 11px sans-serif; fill: #3e4c59; }
svg .cl { font: 12px sans-serif; fill: #3e4c59; }
.defs { font-size: 12px; color: var(--muted); }
.defs li { margin: 2px 0; }
footer { margin-top: 36px; padding-top: 8px; border-top: 1px solid var(--rule); font-size: 11.5px;
         color: var(--muted); }
@page { size: A4; margin: 14mm 12mm; }
@media print {
  body { max-width: none; padding: 0; font-size: 11.5px; }
  h2 { break-before: auto; }
  .facts { grid-template-columns: repeat(3, 1fr); }
  table { font-size: 10.5px; }
  section { break-inside: auto; }
}
"""
