"""`echoclr report`: the HTML/Markdown report and the TRIPOD+AI checklist."""
