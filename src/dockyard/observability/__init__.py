"""What the registry tells its operators about itself: one record per request, handed to
the observers (the access log, metrics) by the HTTP layer after the response is sent."""
