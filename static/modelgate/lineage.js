// The lineage graph of the version page: the lineage API's nodes and edges drawn by cytoscape with the
// dagre layout, left to right (datasets and parents, the version, then children, exports and runs).
// A node with a `url` opens it on tap. The cytoscape instance is window.modelgateLineage (for tests);
// the container's data-state says "loading", "ready" or "error", and data-query what it shows.
(function () {
  "use strict";

  const container = document.getElementById("lineage-graph");
  if (!container) return;
  if (typeof window.cytoscape !== "function") {
    // static/vendor/ is filled by `make install` (scripts/vendor_static.sh); the lists below still work.
    const note = document.createElement("p");
    note.className = "lineage-message empty";
    note.textContent = "The graph's scripts are missing from static/vendor/; the lists below show the lineage.";
    container.appendChild(note);
    container.dataset.state = "error";
    return;
  }

  const direction = document.getElementById("lineage-direction");
  const depth = document.getElementById("lineage-depth");

  // The page's palette (static/modelgate/app.css): [text, fill, border] for each status.
  const GREEN = ["#1a7f37", "#e4f5e9", "#7cc496"];
  const RED = ["#b42318", "#fdecea", "#e69a93"];
  const AMBER = ["#935f00", "#fff4d6", "#e3be5c"];
  const BLUE = ["#1f5fbf", "#e6effb", "#8fb1e3"];
  const PURPLE = ["#6b3fb8", "#f0eafb", "#b69de3"];
  const GREY = ["#5b6673", "#eceff2", "#b8c2cc"];
  const DATASET = ["#1f2933", "#ffffff", "#616e7c"];
  const COLOURS = {
    production: GREEN,
    passed: GREEN,
    approved: GREEN,
    rejected: RED,
    failed: RED,
    awaiting_approval: AMBER,
    open: AMBER,
    insufficient: AMBER,
    registered: BLUE,
    validating: BLUE,
    pending: BLUE,
    running: BLUE,
    shadowing: PURPLE,
  };
  const SHAPES = {
    dataset: "barrel",
    version: "round-rectangle",
    export: "cut-rectangle",
    gate: "round-hexagon",
    shadow: "rhomboid",
    approval: "round-octagon",
  };

  const PLAIN_EDGES = new Set(["exported_to", "gated_by", "shadowed_by", "signed_off_by"]);

  const words = (text) => String(text || "").replace(/_/g, " ");

  function label(node) {
    switch (node.type) {
      case "version":
        return `${node.model} v${node.version}\n${words(node.status)}`;
      case "dataset":
        return `${node.name}:${node.version}\n${Number(node.rows).toLocaleString("en")} rows`;
      case "export":
        return `export ${node.format}\n${words(node.status)}`;
      case "gate":
        return `gates, attempt ${node.attempt}\n${node.failed ? `${node.failed} failed` : "all passed"}`;
      case "shadow": {
        const agreement = typeof node.agreement === "number" ? ` · ${(100 * node.agreement).toFixed(1)}%` : "";
        return `shadow run ${node.run}\n${words(node.status)}${agreement}`;
      }
      case "approval":
        return `sign-off round ${node.round}\n${node.approvals.length} approve · ${node.rejections.length} reject`;
      default:
        return node.id;
    }
  }

  function element(node) {
    const text = label(node);
    const longest = Math.max(...text.split("\n").map((line) => line.length));
    const [colour, fill, border] = node.type === "dataset" ? DATASET : COLOURS[node.status] || GREY;
    const round = node.type === "gate" || node.type === "shadow" || node.type === "approval";
    return {
      group: "nodes",
      data: {
        ...node,
        label: text,
        width: Math.max(96, longest * 7.5 + (round ? 44 : 24)),
        height: node.type === "version" ? 50 : 44,
        colour,
        fill,
        border,
        shape: SHAPES[node.type] || "round-rectangle",
      },
      classes: [node.type, node.root ? "root" : "", node.url ? "link" : ""].join(" ").trim(),
    };
  }

  const cy = window.cytoscape({
    container,
    elements: [],
    autoungrabify: true,
    boxSelectionEnabled: false,
    userZoomingEnabled: false, // the mouse wheel scrolls the page, not the graph
    minZoom: 0.3,
    maxZoom: 1.4,
    style: [
      {
        selector: "node",
        style: {
          shape: "data(shape)",
          width: "data(width)",
          height: "data(height)",
          label: "data(label)",
          "text-wrap": "wrap",
          "text-valign": "center",
          "text-halign": "center",
          "font-family": 'system-ui, "DejaVu Sans", Arial, sans-serif',
          "font-size": 12,
          "line-height": 1.3,
          color: "data(colour)",
          "background-color": "data(fill)",
          "border-width": 1.5,
          "border-color": "data(border)",
        },
      },
      { selector: "node.version", style: { "font-weight": 600 } },
      { selector: "node.root", style: { "border-width": 3, "border-color": "#2454c5" } },
      { selector: "node.dataset", style: { "border-style": "solid" } },
      { selector: "node.gate, node.shadow, node.approval", style: { "border-style": "dashed" } },
      { selector: "node.link:active", style: { "overlay-opacity": 0.08 } },
      {
        selector: "edge",
        style: {
          width: 1.4,
          "line-color": "#b8c2cc",
          "target-arrow-color": "#b8c2cc",
          "target-arrow-shape": "triangle",
          "curve-style": "bezier",
          label: "data(kind)",
          "font-size": 9,
          "font-family": 'system-ui, "DejaVu Sans", Arial, sans-serif',
          color: "#616e7c",
          "text-background-color": "#ffffff",
          "text-background-opacity": 0.9,
          "text-background-padding": 2,
          "text-rotation": "autorotate",
        },
      },
      // An export's or a run's edge says nothing its node does not: only the roles of datasets and
      // the kinds of parent links are written on the edges.
      { selector: "edge.plain", style: { label: "" } },
    ],
  });
  window.modelgateLineage = cy;

  cy.on("tap", "node.link", (event) => {
    window.location.assign(event.target.data("url"));
  });
  cy.on("mouseover", "node.link", () => {
    container.style.cursor = "pointer";
  });
  cy.on("mouseout", "node", () => {
    container.style.cursor = "";
  });

  function message(text) {
    cy.elements().remove();
    let note = container.querySelector(".lineage-message");
    if (!note) {
      note = document.createElement("p");
      note.className = "lineage-message empty";
      container.appendChild(note);
    }
    note.textContent = text;
  }

  let latest = 0; // a slow answer to an older choice must not replace a newer one

  function load() {
    const query = `direction=${encodeURIComponent(direction.value)}&depth=${encodeURIComponent(depth.value)}`;
    const ticket = ++latest;
    container.dataset.state = "loading";
    fetch(`${container.dataset.url}?${query}`, {
      credentials: "same-origin",
      headers: { Accept: "application/json" },
    })
      .then((response) => {
        if (!response.ok) throw new Error(`the lineage API answered ${response.status}`);
        return response.json();
      })
      .then((graph) => {
        if (ticket !== latest) return;
        const note = container.querySelector(".lineage-message");
        if (note) note.remove();
        cy.elements().remove();
        cy.add(graph.nodes.map(element));
        // One dataset may feed a version in two roles: the edges get ids of their own.
        cy.add(
          graph.edges.map((edge, n) => ({
            group: "edges",
            data: { id: `edge-${n}`, ...edge },
            classes: PLAIN_EDGES.has(edge.kind) ? "plain" : "",
          })),
        );
        cy.layout({
          name: "dagre",
          rankDir: "LR",
          nodeSep: 18,
          rankSep: 70,
          edgeSep: 10,
          padding: 16,
          fit: true,
          animate: false,
        }).run();
        container.dataset.query = query;
        container.dataset.state = "ready";
      })
      .catch((error) => {
        if (ticket !== latest) return;
        message(`The graph could not be drawn (${error.message}); the lists below show the lineage.`);
        container.dataset.query = query;
        container.dataset.state = "error";
      });
  }

  direction.addEventListener("change", load);
  depth.addEventListener("change", load);
  window.addEventListener("resize", () => cy.fit(undefined, 16));
  load();
})();
