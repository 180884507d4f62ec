from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("health/", views.health),
    path("page/", views.page),
    path("session/", views.session),
    path("lowlevel/<int:n>/", views.lowlevel),
    path("alowlevel/<int:n>/", views.alowlevel),
]
