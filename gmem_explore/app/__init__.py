"""The Gradio app (`python app.py`): server.py builds the page and serves it; common.py holds what every tab
shares (per-session state, the model store, pictures of bank rows); runs.py a model run with live previews and
Stop; pictures.py the generated pictures of rows of banks without thumbnails; mapping.py, scatter.py and
scatter*.js the Bank tab's interactive map; files.py the uploads and downloads; one module per tab
(generate_tab, bank_tab, swap_tab, interpolate_tab). A new tab is a module with a build(ctx) function, added in
server.py. The app uses only the public API of the core (pipeline, bank, sampling)."""
